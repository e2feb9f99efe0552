"""Accuracy-aware quantization: keep the end of the network in float until the parity budget holds.

The search is the same for every format; a format supplies `quantize(excluded ops, out path)`
and the ops that may stay float, in the order they run. Each candidate file is measured through
edge_runtime (the code that ships) on the run's *validation* split against the Keras model; the
test split stays untouched for the benchmark.

1. Quantize everything. Within budget: done.
2. Keep a float *tail*: the last k candidate ops, from some op to the output. Quantization error
   builds up with depth, and near the output it flips the predictions the model is least sure of;
   a float tail also dequantizes once, where scattered float ops each pay a dequantize and
   quantize. Measured on a ResNet-50 trained from scratch on Leeds: single ops kept float, ranked
   by leave-one-out, never helped (35 of 36), because its error is spread over every layer of
   stages 4 and 5; the last 18 of its 72 ops in float met the budget.
3. k is found by bisection between 0 (misses) and the cap (a share of the candidate ops): the
   smallest k measured to meet the budget, in about log2(cap) + 1 quantizations. If even the cap
   misses, that file is written and marked, and the export says so.
"""
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.classifier import Classifier
from train.metrics import PARITY, parity_misses

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


def search(quantize, candidates, validation, budget, work, log, suffix, full=None):
    """Write the chosen file and return (its path, the manifest's "fallback" record).

    quantize(excluded, path): writes a quantized model with the `excluded` ops left in float.
    candidates: the ops that may stay float, in the order they run.
    validation: (uint8 pixels, labels, Keras probabilities) of the validation split.
    full: (path, validation metrics) of the fully quantized file when already measured.
    """
    pixels, labels, ref = validation
    work = Path(work)

    def build(excluded, name):
        path = work / f"{name}{suffix}"
        quantize(list(excluded), path)
        return path

    if full is None:
        path = build([], "full")
        full = path, val_metrics(Classifier(path, verify=False).probabilities(pixels), ref, labels)
    full, before = Path(full[0]), full[1]

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
    cap = max(1, int(budget.cap * len(candidates)))
    tried = {}  # tail length -> (file, metrics)

    def tail(k):
        ops = candidates[len(candidates) - k:]
        path = build(ops, f"tail{k}")
        m = val_metrics(Classifier(path, verify=False).probabilities(pixels), ref, labels)
        log(f"  last {k} op(s) in float, from {short_name(ops[0])}: Δtop-1 {m['top1_change_points']:+.1f} pts, "
            f"agreement {m['agreement']:.3f}" + (" -> meets the budget" if not misses(m) else ""))
        tried[k] = path, m
        return not misses(m)

    if tail(cap):
        lo, hi = 0, cap  # invariant: a tail of hi meets the budget, one of lo was measured to miss
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if tail(mid) else (mid, hi)
        k = hi
    else:  # even the cap misses: keep the cap's tail if it is closer to the Keras model than none
        k = cap if tried[cap][1]["mean_abs_prob_diff"] < before["mean_abs_prob_diff"] else 0
    path, after = tried[k] if k else (full, before)
    met = not misses(after)
    chosen = candidates[len(candidates) - k:] if k else []
    record.update(kept_float=chosen, float_from=short_name(chosen[0]) if chosen else None, met_budget=met,
                  validation_after=after, search_seconds=round(time.time() - t0, 1),
                  tried=[{"float_ops": n, **{key: m[key] for key in ("top1_change_points", "agreement")}}
                         for n, (_, m) in sorted(tried.items())],
                  cost={"bytes_full_int8": full.stat().st_size, "bytes": path.stat().st_size,
                        "p50_ms_1thread_full_int8": _p50_ms(full, pixels), "p50_ms_1thread": _p50_ms(path, pixels)})
    if not met:
        log(f"  WARNING: the budget still misses with the last {cap} op(s) in float (the cap, of {len(candidates)}); "
            f"the file is written and marked")
    else:
        log(f"  {k} of {len(candidates)} ops in float, from {short_name(chosen[0])} on")
    final = work / f"chosen{suffix}"
    shutil.copy(path, final)
    return final, record
