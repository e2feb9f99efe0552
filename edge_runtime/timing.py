"""Latency and throughput loops. Wall-clock figures are reported, never asserted."""
import time

import numpy as np

# Timing stops once the median's 95% confidence interval is within `ci` (relative half-width) of it,
# after at least min_runs calls and min_seconds; max_runs / max_seconds bound a noisy machine.
DEFAULTS = {"warmup": 5, "min_runs": 20, "min_seconds": 0.5, "ci": 0.02, "max_runs": 2000, "max_seconds": 30.0}


def median_ci(seconds, z=1.96):
    """Distribution-free 95% interval of the median: the order statistics n/2 -/+ z*sqrt(n)/2."""
    x = np.sort(np.asarray(seconds, dtype=np.float64))
    n = len(x)
    half = z * np.sqrt(n) / 2
    lo, hi = int(np.floor(n / 2 - half)), int(np.ceil(n / 2 + half))
    return float(x[max(0, lo)]), float(x[min(n - 1, hi)])


def _relative(lo, hi, median):
    return (hi - lo) / 2 / median if median > 0 else 0.0


def relative_ci(seconds):
    lo, hi = median_ci(seconds)
    return _relative(lo, hi, float(np.median(seconds)))


def summarize(seconds):
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    lo, hi = median_ci(ms)
    return {"runs": int(len(ms)), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "p50_ci_ms": [lo, hi],
            "p50_ci_relative": _relative(lo, hi, float(p50))}


def latency(*fns, **rules):
    """Time each fn(i) one call at a time after `warmup` untimed rounds; one summary per fn.

    Several fns are interleaved call by call, so a slow spell of the machine hits them alike
    and their ratio (the runtime's overhead over the bare interpreter) stays fair.
    Stops when every fn's median is known to within `ci` (95% interval, relative half-width),
    once min_runs calls and min_seconds have passed; or at max_runs / max_seconds.
    ci=None times for exactly min_runs / min_seconds.
    """
    out = [summarize(ts) for ts in samples(*fns, **rules)]
    return out[0] if len(fns) == 1 else out


def samples(*fns, warmup=DEFAULTS["warmup"], min_runs=DEFAULTS["min_runs"], min_seconds=DEFAULTS["min_seconds"],
            ci=DEFAULTS["ci"], max_runs=DEFAULTS["max_runs"], max_seconds=DEFAULTS["max_seconds"]):
    """latency()'s timed calls: one list of seconds per fn."""
    for i in range(warmup):
        for fn in fns:
            fn(i)
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    for i in range(max_runs):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn(i)
            ts.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        if elapsed >= max_seconds:
            break
        if i + 1 >= min_runs and elapsed >= min_seconds and (ci is None or all(relative_ci(ts) <= ci for ts in times)):
            break
    return times


def throughput(fn, batch, min_runs=3, min_seconds=1.0, max_seconds=30.0):
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
