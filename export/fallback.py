"""Accuracy-aware quantization: keep the most sensitive ops in float until the parity budget holds.

The search is the same for every format; a format supplies `quantize(excluded ops, out path)`
and the list of ops that may stay float. Each candidate file is measured through edge_runtime
(the code that ships) on the run's *validation* split against the Keras model; the test split
stays untouched for the benchmark.

1. Quantize everything. Within budget: done.
2. Rank ops by sensitivity, leave-one-out: the file with only that op in float, scored by the
   mean absolute change in probabilities against Keras on a subset of validation images
   (lower = that op's quantization hurt more). This measures each op's effect on the output,
   which per-layer error statistics only approximate (NNCF ranks the same way).
3. Try ops in rank order, one more at a time, on the whole validation split; an op stays float
   only if that lowers the mean probability change (single ops interact, so the ranking is only a
   guide), until the budget holds or the cap (a share of the candidate ops) is reached; at most
   twice the cap are tried, and the search stops after PATIENCE ops in a row that did not help
   (on a ResNet-50 whose error is spread over every layer, 35 of 36 trials helped nothing).
"""
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.classifier import Classifier
from train.metrics import PARITY, parity_misses

RANK_IMAGES = 128  # validation images that score each leave-one-out file
PATIENCE = 8  # stop trying after this many ops in a row that did not help


@dataclass
class Budget:
    max_drop: float = PARITY["max_drop"]
    min_agreement: float = PARITY["min_agreement"]
    cap: float = 0.25  # at most this share of the candidate ops stays float
    enabled: bool = True


def val_metrics(probs, ref, labels):
    pred, ref_pred = probs.argmax(1), ref.argmax(1)
    drop = 100.0 * (np.mean(pred == labels) - np.mean(ref_pred == labels))
    return {"images": int(len(labels)), "top1_change_points": round(float(drop), 2),
            "agreement": round(float(np.mean(pred == ref_pred)), 4),
            "mean_abs_prob_diff": float(np.abs(probs - ref).mean())}


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


def search(quantize, candidates, validation, budget, work, log, suffix):
    """Write the chosen file and return (its path, the manifest's "fallback" record).

    quantize(excluded, path): writes a quantized model with the `excluded` ops left in float.
    validation: (uint8 pixels, labels, Keras probabilities) of the validation split.
    """
    pixels, labels, ref = validation
    work = Path(work)
    probs_of = lambda path: Classifier(path, verify=False).probabilities(pixels)  # noqa: E731

    def build(excluded, name):
        path = work / f"{name}{suffix}"
        quantize(list(excluded), path)
        return path

    full = build([], "full")
    before = val_metrics(probs_of(full), ref, labels)

    def misses(m):
        return parity_misses(m["top1_change_points"], m["agreement"], budget.max_drop, budget.min_agreement)

    missed = misses(before)
    record = {"enabled": budget.enabled, "budget": {"max_drop": budget.max_drop, "min_agreement": budget.min_agreement,
                                                     "cap": budget.cap},
              "candidate_ops": len(candidates), "validation_before": before, "kept_float": [],
              "validation_after": before, "met_budget": not missed}
    log(f"  validation ({before['images']} images): Δtop-1 {before['top1_change_points']:+.1f} pts, "
        f"agreement {before['agreement']:.3f}" + ("" if not missed else f": misses the budget ({'; '.join(missed)})"))
    if not missed or not budget.enabled or not candidates:
        return full, record

    t0 = time.time()
    n_rank = min(RANK_IMAGES, len(labels))
    scores = []
    for i, op in enumerate(candidates, 1):
        p = Classifier(build([op], "loo"), verify=False).probabilities(pixels[:n_rank])
        scores.append((float(np.abs(p - ref[:n_rank]).mean()), op))
        if i % 10 == 0 or i == len(candidates):
            log(f"  ranking ops by sensitivity (leave-one-out on {n_rank} validation images): {i}/{len(candidates)}")
    scores.sort()
    ranked = [op for _, op in scores]
    cap = max(1, int(budget.cap * len(candidates)))
    chosen, after, path, tried, in_vain = [], before, full, 0, 0
    for op in ranked[: 2 * cap]:
        if len(chosen) >= cap or not misses(after) or in_vain >= PATIENCE:
            break
        tried += 1
        trial = build(chosen + [op], f"try{tried}")
        m = val_metrics(probs_of(trial), ref, labels)
        keep = m["mean_abs_prob_diff"] < after["mean_abs_prob_diff"] or not misses(m)
        log(f"  {short_name(op)} in float: Δtop-1 {m['top1_change_points']:+.1f} pts, agreement {m['agreement']:.3f}"
            + (f" -> kept ({len(chosen) + 1} op(s) in float)" if keep else " -> no better, back to int8"))
        if keep:
            chosen, after, path, in_vain = chosen + [op], m, trial, 0
        else:
            in_vain += 1
    met = not misses(after)
    if in_vain >= PATIENCE and not met:
        log(f"  stopped: {PATIENCE} ops in a row did not help")
    record.update(kept_float=list(chosen), tried=tried, stopped_in_vain=in_vain >= PATIENCE, validation_after=after,
                  met_budget=met,
                  search_seconds=round(time.time() - t0, 1),
                  sensitivity=[{"op": op, "mean_abs_prob_diff_when_float": round(s, 6)} for s, op in scores[: 2 * cap]],
                  cost={"bytes_full_int8": full.stat().st_size, "bytes": path.stat().st_size,
                        "p50_ms_1thread_full_int8": _p50_ms(full, pixels), "p50_ms_1thread": _p50_ms(path, pixels)})
    if not met:
        log(f"  WARNING: the budget still misses with {len(chosen)} op(s) in float (cap {cap} of {len(candidates)}, "
            f"{tried} tried); the file is written and marked")
    final = work / f"chosen{suffix}"
    shutil.copy(path, final)
    return final, record
