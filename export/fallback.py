"""Accuracy-aware quantization: keep ops in float until the parity budget holds.

The search is the same for every format; a format supplies `quantize(excluded ops, out path)`
and the ops that may stay float, in the order they run. Each candidate file is measured through
edge_runtime (the code that ships) on the run's *validation* split against the Keras model; the
test split stays untouched for the benchmark.

1. Quantize everything. Within budget: done.
2. A float *tail*: the last k candidate ops, from some op to the output, k found by bisection
   between 0 and the cap (a share of the candidate ops) in about log2(cap) + 1 quantizations.
   Quantization error builds up with depth and near the output flips the predictions the model is
   least sure of, and a tail dequantizes once where scattered float ops each pay a dequantize and a
   quantize (docs/export.md has the runs that showed it).
3. If even the cap's tail misses: single ops, ranked leave-one-out (the file with only that op in
   float, scored by the mean absolute change in probabilities against Keras; NNCF ranks the same way)
   and tried in that order, one more at a time; an op stays float only if that lowers the change,
   until the budget holds or the cap is reached, stopping after PATIENCE ops in a row that did not
   help: a model's sensitive ops can be early ones that no tail reaches. The ranking costs one
   quantization per op, so it is skipped, and says so, when the tail's trials put it over the
   budget's `seconds`.
The better of the two is kept (meets the budget, then the smaller probability change); if neither
meets it, that file is written and marked, and the export says so.
4. Where the format can (TFLite, `compact`), the ops kept float get int8 weights for their float
   kernels; that file replaces the float-weights one only if it holds what that one held (_compact).
"""
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.classifier import Classifier
from runlib.metrics import class_misses, class_parity, parity_misses
from runlib.options import defaults
from runlib.progress import Progress

_OPTION = defaults("export")

PATIENCE = 8  # the single-op search stops after this many ops in a row that did not help


@dataclass
class Budget:
    max_drop: float = _OPTION["max_drop"]
    min_agreement: float = _OPTION["min_agreement"]
    cap: float = _OPTION["fallback_cap"]  # at most this share of the candidate ops stays float
    enabled: bool = _OPTION["fallback"]
    seconds: float = _OPTION["fallback_seconds"]  # the single-op search runs only if its ranking should take no longer
    max_class_drop: float = _OPTION["max_class_drop"]  # the per-class budget, as the gate applies it
    class_images: int = _OPTION["class_images"]
    rule: object = None  # the run's decision rule (edge_runtime.decision.Rule): decisions must agree as well
    outside: object = None  # (uint8 pixels, Keras probabilities) of photos like the field's: decisions agree there too


    @classmethod
    def of(cls, config):
        """The budget an ExportConfig (runlib/options.py) sets."""
        return cls(max_drop=config.max_drop, min_agreement=config.min_agreement, cap=config.fallback_cap,
                   enabled=config.fallback, seconds=config.fallback_seconds, max_class_drop=config.max_class_drop,
                   class_images=config.class_images)

    def misses(self, m):
        """Why validation metrics `m` miss the budget, overall or in a class (empty when they hold it)."""
        decisions = [(m.get(key), where) for key, where in (("decision_agreement", "validation images"),
                                                            ("decision_agreement_outside", "field-like images"))]
        return (parity_misses(m["top1_change_points"], m["agreement"], self.max_drop, self.min_agreement)
                + class_misses(m.get("classes_lost") or {}, self.max_class_drop, self.class_images)
                + [f"decision agreement {a:.3f} on {where} < {self.min_agreement:g}" for a, where in decisions
                   if a is not None and a < self.min_agreement - 1e-12])

    def closeness(self, m):
        """Orders validation metrics, closer to the Keras model last: meeting the budget, then a smaller
        mean probability change. What every choice between two files of one variant compares."""
        return (not self.misses(m), -m["mean_abs_prob_diff"])


def val_metrics(probs, ref, labels, rule=None):
    """A file's validation figures against the Keras model; with the run's decision rule, the share of images on
    which both decide alike (the same class, or both "unknown") too."""
    pred, ref_pred = probs.argmax(1), ref.argmax(1)
    drop = 100.0 * (np.mean(pred == labels) - np.mean(ref_pred == labels))
    parity = class_parity(labels, probs, ref, [str(c) for c in range(probs.shape[1])])
    return {"images": int(len(labels)), "top1_change_points": round(float(drop), 2),
            "agreement": round(float(np.mean(pred == ref_pred)), 4),
            "mean_abs_prob_diff": float(np.abs(probs - ref).mean()),
            # only the classes that lost ground, so the manifest stays small with hundreds of classes
            "classes_lost": {c: v for c, v in parity.items() if v["lost"] > v["gained"]},
            **({"decision_agreement": round(float(np.mean(rule.decide(probs)[0] == rule.decide(ref)[0])), 4)}
               if rule is not None else {})}


def decided(m):
    """The decision agreements of validation metrics, for a log line ('' when there is no rule)."""
    parts = [f"{m[k]:.3f} {w}" for k, w in (("decision_agreement", "validation"), ("decision_agreement_outside",
                                                                                   "field-like")) if k in m]
    return f", decisions {' / '.join(parts)}" if parts else ""


def _probabilities(path, pixels):
    """A quantized file's probabilities through edge_runtime, on every core: the runtimes' default is
    one thread, and the export runs dozens of files."""
    return Classifier(path, verify=False, threads=os.cpu_count()).probabilities(pixels)


def measure(path, validation, budget=None):
    """Validation metrics of a quantized file, run through edge_runtime, against the Keras model; with a budget
    holding the run's rule, its decisions on the validation images and on the budget's field-like images too."""
    pixels, labels, ref = validation
    rule = budget.rule if budget is not None else None
    m = val_metrics(_probabilities(path, pixels), ref, labels, rule)
    if rule is not None and budget.outside is not None:
        px, theirs = budget.outside
        mine = rule.decide(_probabilities(path, px))[0]
        m["decision_agreement_outside"] = round(float(np.mean(mine == rule.decide(theirs)[0])), 4)
    return m


def short_name(op):
    """A readable op name for the log: TFLite names a fused op by every tensor it absorbed
    ('model/conv2_block3_2_relu/Relu;model/conv2_block3_2_bn/...'); the first one's layer says which."""
    parts = op.split(";")[0].split("/")
    return parts[-2] if len(parts) >= 2 else parts[0]


def _p50_ms(path, pixels, runs=15):
    clf = Classifier(path, verify=False, threads=1)
    x = pixels[:1]
    clf.probabilities(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        clf.probabilities(x)
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)), 3)


@dataclass(frozen=True)
class Choice:
    """A file the search may keep: the ops it keeps float, its path, its validation metrics, how it was found."""
    ops: list
    path: Path
    metrics: dict
    strategy: str


class Search:
    """The accuracy-aware fallback of one int8 file (the module docstring's steps).

    fmt: the format's quantizer (export/int8.py): fmt.quantize(excluded, path) writes a quantized model with the
    `excluded` ops left in float; fmt.suffix is its file extension; fmt.compact(src, dst) writes src with its
    float ops' weights in int8 and returns how many ops changed (see compact()), or is None where the format
    has no such form.
    candidates: the ops that may stay float, in the order they run.
    validation: (uint8 pixels, labels, Keras probabilities) of the validation split.
    """

    def __init__(self, fmt, candidates, validation, budget, work, log):
        self.fmt, self.candidates, self.validation = fmt, list(candidates), validation
        self.budget, self.work, self.log = budget, Path(work), log
        self.misses = budget.misses
        self.cap = max(1, int(budget.cap * len(self.candidates)))

    def build(self, excluded, name):
        path = self.work / f"{name}{self.fmt.suffix}"
        self.fmt.quantize(list(excluded), path)
        return path

    def run(self, full=None):
        """Write the chosen file and return (its path, the manifest's "fallback" record). full: (path,
        validation metrics) of the fully quantized file when already measured."""
        if full is None:
            path = self.build([], "full")
            full = path, measure(path, self.validation, self.budget)
        full, before = Path(full[0]), full[1]
        missed = self.misses(before)
        b = self.budget
        record = {"enabled": b.enabled, "budget": {"max_drop": b.max_drop, "min_agreement": b.min_agreement, "cap": b.cap,
                                                   "max_class_drop": b.max_class_drop, "class_images": b.class_images},
                  "candidate_ops": len(self.candidates), "validation_before": before, "kept_float": [],
                  "validation_after": before, "met_budget": not missed}
        self.log(f"  validation ({before['images']} images): Δtop-1 {before['top1_change_points']:+.1f} pts, "
                 f"agreement {before['agreement']:.3f}{decided(before)}"
                 + ("" if not missed else f": misses the budget ({'; '.join(missed)})"))
        if not missed or not b.enabled or not self.candidates:
            return full, record
        t0 = time.time()
        best, tried = self.tail(full, before)
        record["tail_tried"] = [{"float_ops": n, **{key: m[key] for key in ("top1_change_points", "agreement")}}
                                for n, (_, m) in sorted(tried.items())]
        if self.misses(best.metrics):
            best = self.maybe_single_ops(record, full, before, best, (time.time() - t0) / len(tried))
        if self.fmt.compact is not None and best.ops:
            path, metrics, record["float_weights"] = self.compact(best.path, best.metrics)
            best = Choice(best.ops, path, metrics, best.strategy)
        return self.finish(record, full, best, t0)

    def tail(self, full, before):
        """(Choice, {k: (file, metrics)}): the shortest float tail within the cap that meets the budget, by
        bisection; or the cap's, or none, when even the cap's misses."""
        tried = {}

        def attempt(k):
            ops = self.candidates[len(self.candidates) - k:]
            path = self.build(ops, f"tail{k}")
            m = measure(path, self.validation, self.budget)
            self.log(f"  last {k} op(s) in float, from {short_name(ops[0])}: Δtop-1 {m['top1_change_points']:+.1f} pts, "
                     f"agreement {m['agreement']:.3f}{decided(m)}" + (" -> meets the budget" if not self.misses(m) else ""))
            tried[k] = path, m
            return not self.misses(m)

        cap = self.cap
        if attempt(cap):
            lo, hi = 0, cap  # invariant: a tail of hi meets the budget, one of lo was measured to miss
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if attempt(mid) else (mid, hi)
            k = hi
        else:  # even the cap misses: keep the cap's tail if it is closer to the Keras model than none
            k = cap if tried[cap][1]["mean_abs_prob_diff"] < before["mean_abs_prob_diff"] else 0
        path, after = tried[k] if k else (full, before)
        return Choice(self.candidates[len(self.candidates) - k:] if k else [], path, after, "tail"), tried

    def maybe_single_ops(self, record, full, before, best, per_trial):
        """The single-op search when its ranking fits the time budget; the better Choice of it and `best`."""
        estimate = per_trial * len(self.candidates)
        if estimate > self.budget.seconds:
            self.log(f"  single-op search skipped: ranking {len(self.candidates)} ops would take about {estimate:.0f} s "
                     f"(over {self.budget.seconds:g} s; --fallback-seconds)")
            record["single_ops"] = {"skipped": f"ranking estimated at {estimate:.0f} s"}
            return best
        single, record["single_ops"] = self.single_ops(full, before)
        return single if self.budget.closeness(single.metrics) > self.budget.closeness(best.metrics) else best

    def single_ops(self, full, before):
        """(Choice, record) of the single-op search (step 3 of the module docstring)."""
        pixels, _, ref = self.validation
        scores = []
        progress = Progress("export", len(self.candidates), "ops ranked by sensitivity (leave-one-out)")
        for i, op in enumerate(self.candidates, 1):
            p = _probabilities(self.build([op], "loo"), pixels)
            scores.append((float(np.abs(p - ref).mean()), op))
            progress.update(i)
        scores.sort()
        chosen, after, path, tried, in_vain = [], before, full, 0, 0
        for _, op in scores[: 2 * self.cap]:
            if len(chosen) >= self.cap or not self.misses(after) or in_vain >= PATIENCE:
                break
            tried += 1
            trial = self.build(chosen + [op], f"try{tried}")
            m = measure(trial, self.validation, self.budget)
            keep = m["mean_abs_prob_diff"] < after["mean_abs_prob_diff"] or not self.misses(m)
            self.log(f"  {short_name(op)} in float: Δtop-1 {m['top1_change_points']:+.1f} pts"
                     f", agreement {m['agreement']:.3f}{decided(m)}"
                     + (f" -> kept ({len(chosen) + 1} op(s) in float)" if keep else " -> no better, back to int8"))
            if keep:
                chosen, after, path, in_vain = chosen + [op], m, trial, 0
            else:
                in_vain += 1
        if in_vain >= PATIENCE and self.misses(after):
            self.log(f"  stopped: {PATIENCE} ops in a row did not help")
        return Choice(chosen, path, after, "single ops"), {
            "tried": tried, "stopped_in_vain": in_vain >= PATIENCE,
            "sensitivity": [{"op": op, "mean_abs_prob_diff_when_float": round(sc, 6)} for sc, op in scores[: 2 * self.cap]]}

    def compact(self, path, after):
        """(file, metrics, record): the chosen file with int8 weights in its float ops, when that holds what
        the float-weights file held (the budget if it met it, else no lower agreement or top-1 change);
        otherwise the float-weights file."""
        dst = self.work / f"compact{self.fmt.suffix}"
        ops = self.fmt.compact(path, dst)
        if not ops:
            return path, after, {"int8": False, "reason": "no float op with weights"}
        m = measure(dst, self.validation, self.budget)
        keep = not self.misses(m) if not self.misses(after) else (m["agreement"] >= after["agreement"]
                                                                  and m["top1_change_points"] >= after["top1_change_points"])
        self.log(f"  int8 weights in {ops} float op(s): {path.stat().st_size / 1e6:.1f} "
                 f"-> {dst.stat().st_size / 1e6:.1f} MB, "
                 f"Δtop-1 {m['top1_change_points']:+.1f} pts, agreement {m['agreement']:.3f}{decided(m)} -> "
                 + ("kept" if keep else "not kept (float weights hold parity better)"))
        record = {"int8": keep, "ops": ops, "validation": m, "bytes": dst.stat().st_size}
        return (dst, m, record) if keep else (path, after, record)

    def finish(self, record, full, best, t0):
        met = not self.misses(best.metrics)
        pixels, chosen = self.validation[0], best.ops
        record.update(kept_float=chosen, kept_float_layers=[short_name(op) for op in chosen], strategy=best.strategy,
                      float_from=short_name(chosen[0]) if chosen and best.strategy == "tail" else None, met_budget=met,
                      validation_after=best.metrics, search_seconds=round(time.time() - t0, 1),
                      cost={"bytes_full_int8": full.stat().st_size, "bytes": best.path.stat().st_size,
                            "p50_ms_1thread_full_int8": _p50_ms(full, pixels), "p50_ms_1thread": _p50_ms(best.path, pixels)})
        n = len(self.candidates)
        if not met:
            self.log(f"  WARNING: the budget still misses with {len(chosen)} op(s) in float ({best.strategy}; cap "
                     f"{self.cap} of {n}); the file is written and marked")
        elif chosen:
            self.log(f"  {len(chosen)} of {n} ops in float ({best.strategy}"
                     + (f", from {short_name(chosen[0])} on)" if best.strategy == "tail" else ")"))
        final = self.work / f"chosen{self.fmt.suffix}"
        shutil.copy(best.path, final)
        return final, record
