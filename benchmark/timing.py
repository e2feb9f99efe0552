"""Latency and throughput loops. Wall-clock figures are reported, never asserted."""
import time

import numpy as np

DEFAULTS = {"warmup": 5, "min_runs": 50, "min_seconds": 3.0, "max_runs": 2000, "max_seconds": 60.0}


def summarize(seconds):
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"runs": int(len(ms)), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min())}


def latency(*fns, warmup=DEFAULTS["warmup"], min_runs=DEFAULTS["min_runs"], min_seconds=DEFAULTS["min_seconds"],
            max_runs=DEFAULTS["max_runs"], max_seconds=DEFAULTS["max_seconds"]):
    """Time each fn(i) one call at a time after `warmup` untimed rounds; one summary per fn.

    Several fns are interleaved call by call, so a slow spell of the machine hits them alike
    and their ratio (the runtime's overhead over the bare interpreter) stays fair.
    Runs until both min_runs and min_seconds are reached (so fast models get many samples and
    slow ones at least min_runs), or max_runs / max_seconds, whichever comes first.
    """
    for i in range(warmup):
        for fn in fns:
            fn(i)
    times, start = [[] for _ in fns], time.perf_counter()
    for i in range(max_runs):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn(i)
            ts.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        if (i + 1 >= min_runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            break
    out = [summarize(ts) for ts in times]
    return out[0] if len(fns) == 1 else out


def throughput(fn, batch, min_runs=3, min_seconds=2.0, max_seconds=60.0):
    """Images per second of fn() on one batch of `batch` images, after one warm-up call."""
    fn()
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if (runs >= min_runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            break
    return {"batch": int(batch), "runs": runs, "images_per_second": batch * runs / elapsed}
