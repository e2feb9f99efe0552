"""Activation ranges for int8 files, either format: the calibrator's min/max, or a high percentile of
the activations from some depth of the network on, chosen on the validation split.

Min/max gives each tensor the extremes seen over all calibration images, and a few rare extremes
coarsen the step for every other value. Clipping at a high percentile trades those values for
resolution, but not everywhere: near the input the extremes are every image's bright edges, and
clipping them costs more than it gains, while deeper in the network it helps (docs/export.md has the
figures for a ResNet-50). So each choice below is measured on the validation split and the best kept. The formats differ
only in how activations are observed and ranges written (tflite_ranges.py, onnx_ranges.py).
"""
from typing import NamedTuple

import numpy as np

from .fallback import decided

PERCENTILES = ("p99.99", "p99.9")
FROM = (0.0, 0.25, 0.5, 0.75)  # share of the ops before the first clipped tensor
SAMPLES_PER_IMAGE = 4096  # activation values kept per tensor and image for the percentiles
HELP = ("auto, minmax, or one of p99.99, p99.9 optionally @FROM: percentile ranges for the tensors from that "
        "share of the ops on (e.g. p99.9@0.5)")


def parse(method):
    """'minmax' -> (None, 0.0); 'p99.9' -> (99.9, 0.0); 'p99.9@0.5' -> (99.9, 0.5). ValueError if unknown."""
    if method == "minmax":
        return None, 0.0
    q, _, start = method.partition("@")
    try:
        ok = q in PERCENTILES and 0.0 <= float(start or 0) < 1.0
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"unknown activation ranges {method!r}: {HELP}")
    return float(q[1:]), float(start or 0)


def candidates(method):
    if method != "auto":
        parse(method)
        return [method]
    # p99.99 only for the whole network: docs/export.md has the runs that dropped its later starting points
    return ["minmax", "p99.99"] + [f"p99.9@{s:g}" if s else "p99.9" for s in FROM]


class Observed(NamedTuple):
    lo: float  # min over the calibration images
    hi: float  # max
    percentiles: dict  # {99.9: (0.1th, 99.9th percentile), ...} of the sampled values, for each of PERCENTILES


class Observations:
    """Each tensor's running min and max over the calibration images (what a min/max calibrator
    computes) and SAMPLES_PER_IMAGE of its values per image for the percentiles."""

    def __init__(self, names, seed=0):
        self.rng = np.random.default_rng(seed)
        self.seen = {name: [np.inf, -np.inf, []] for name in names}

    def add(self, name, values):
        s, values = self.seen[name], values.ravel()
        s[0], s[1] = min(s[0], float(values.min())), max(s[1], float(values.max()))
        s[2].append(values[self.rng.integers(0, values.size, SAMPLES_PER_IMAGE)]
                    if values.size > SAMPLES_PER_IMAGE else values.copy())

    def result(self):
        """{name: Observed}. The percentiles are computed here, once per tensor for every range choice
        (each choice used to compute them again: seconds on ResNet-50), and the samples dropped."""
        pcts = [float(p[1:]) for p in PERCENTILES]
        qs = [q for p in pcts for q in (100.0 - p, p)]
        out = {}
        for name, (lo, hi, v) in self.seen.items():
            at = np.percentile(np.concatenate(v), qs)
            out[name] = Observed(lo, hi, {p: (float(at[2 * k]), float(at[2 * k + 1])) for k, p in enumerate(pcts)})
        return out


def clipped(observed, pct):
    """The observed [min, max] narrowed to its pct-th percentiles: never wider than it was, and always
    holding 0 (int8 needs an exact zero)."""
    plo, phi = observed.percentiles[pct]
    return float(min(max(plo, observed.lo), 0.0)), float(max(min(phi, observed.hi), 0.0))


def choose(write, evaluate, misses, method="auto", log=print):
    """(chosen method, manifest record, (file, validation metrics) of that choice).

    write(method) writes the int8 file with those ranges and returns its path; evaluate(path) ->
    validation metrics; misses(metrics) -> reasons the budget misses. auto: min/max when it meets the
    budget, else the choice with the smallest mean probability change against Keras on the validation
    split (on 125 images agreement moves in steps of 0.008 and ties; the probability change is smooth
    and is what the float tail then has to make up)."""
    tried, files = [], {}
    for m in candidates(method):
        files[m] = write(m)
        metrics = evaluate(files[m])
        tried.append({"method": m, **metrics})
        log(f"  activation ranges {m}: validation Δtop-1 {metrics['top1_change_points']:+.1f} pts, "
            f"agreement {metrics['agreement']:.3f}{decided(metrics)}, mean |Δp| {metrics['mean_abs_prob_diff']:.4f}")
        if m == "minmax" and not misses(metrics):
            break  # the calibrator's own ranges already hold the budget: keep them
    best = min(tried, key=lambda t: (t["mean_abs_prob_diff"], -t["agreement"]))  # one when min/max held the budget
    if len(tried) > 1:
        log(f"  activation ranges: {best['method']} chosen on the validation split"
            + ("" if best["method"] == "minmax" else " (p<q>@<f>: percentile ranges from that share of the ops on)"))
    record = {"method": best["method"], "chosen_by": "validation" if method == "auto" else "option", "tried": tried}
    return best["method"], record, (files[best["method"]], {k: v for k, v in best.items() if k != "method"})
