"""`select`: which candidate file is fastest on this machine, measured here.

Every candidate that passes the self-check is timed with the benchmark's method (edge_runtime.timing):
batch 1 through the runtime, after a warm-up, until each p50 is known to within the interval rule (its
distribution-free 95% interval within ±2%), at 1 thread and at all cores. At 1 thread the candidates'
calls are interleaved, so a slow spell of the machine hits them alike. At all cores each candidate is
timed on its own, in two passes (candidate order, then reversed) whose calls are pooled: runtimes'
thread pools spin or sleep between calls, and interleaving them made whichever file ran next to ONNX
Runtime look several times slower than it runs in a process of its own (docs/deploy.md). The lowest p50 at each
thread count is the choice, written with its figures and this machine's CPU flags to the bundle's
selection.json, which predict, serve and watch then use.
"""
from datetime import datetime, timezone

from . import selfcheck
from .bundle import Bundle
from .classifier import Classifier
from .errors import InputError
from .machine import cores, cpu_flags, runtime_versions, signature
from .timing import DEFAULTS, samples, summarize


def select(bundle_dir=".", timing=None, threads=None, log=print):
    """Measure, choose, write selection.json; returns the record."""
    timing = dict(DEFAULTS, **(timing or {}))
    bundle = Bundle(bundle_dir)
    check = selfcheck.run(bundle_dir)
    if not check["integrity"]["passed"]:
        raise InputError(f"{bundle.path}: {check['integrity']['line'].removeprefix('FAIL  ')}; nothing selected")
    excluded = {r["variant"]: r["line"] for r in check["results"][1:] if not r["passed"]}
    for line in excluded.values():
        log(f"not a candidate here: {line}")
    passing = [v for v in bundle.candidates if v not in excluded]
    if not passing:
        raise InputError(f"no file in {bundle.path} reproduces the build machine's outputs here; run `selfcheck`")
    pixels = bundle.reference()["pixels"]
    one = [pixels[i : i + 1] for i in range(len(pixels))]
    all_cores = threads or cores()
    figures = {v: {"file": bundle.entry(v)["file"], "bytes": bundle.model_path(v).stat().st_size} for v in passing}
    for key, n_threads in (("1", 1), ("all", all_cores)):
        if key == "all" and all_cores == 1:
            for v in passing:
                figures[v]["all"] = figures[v]["1"]
            break
        clfs = [Classifier(bundle.model_path(v), threads=n_threads, settings={}) for v in passing]
        fns = [lambda i, c=c: c.probabilities(one[i % len(one)]) for c in clfs]
        if n_threads == 1:
            log(f"timing {len(passing)} candidate(s) at 1 thread, calls interleaved: {', '.join(passing)}")
            timed = samples(*fns, **timing)
        else:
            log(f"timing {len(passing)} candidate(s) at {n_threads} threads, each on its own, in two passes")
            half = dict(timing, max_seconds=timing["max_seconds"] / 2)
            timed = [[] for _ in fns]
            for k in list(range(len(fns))) + list(reversed(range(len(fns)))):
                timed[k] += samples(fns[k], **half)[0]
        for v, ts in zip(passing, timed):
            figures[v][key] = summarize(ts)
        del clfs, fns
    choice = {key: min(passing, key=lambda v: (figures[v][key]["p50_ms"], figures[v]["bytes"])) for key in ("1", "all")}
    record = {"choice": choice, "threads": {"1": 1, "all": all_cores}, "machine": signature(), "cpu_flags": cpu_flags(),
              "figures": figures, "excluded": excluded, "timing": timing, "versions": runtime_versions(),
              "selected_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    bundle.write_selection(record)
    return record


def table(record):
    """The selection's figures as a Markdown table, the choices marked."""
    n = record["threads"]["all"]
    lines = [f"| candidate | MB | p50 ms, 1 thread | 95% CI | p50 ms, {n} threads | 95% CI | timed calls |",
             "|---|---|---|---|---|---|---|"]
    for v, f in record["figures"].items():
        marks = "".join(m for key, m in (("1", " ◀ 1 thread"), ("all", f" ◀ {n} threads")) if record["choice"][key] == v)
        one, al = f["1"], f["all"]
        lines.append(f"| {v}{marks} | {f['bytes'] / 1e6:.2f} | {one['p50_ms']:.2f} | "
                     f"[{one['p50_ci_ms'][0]:.2f}, {one['p50_ci_ms'][1]:.2f}] | {al['p50_ms']:.2f} | "
                     f"[{al['p50_ci_ms'][0]:.2f}, {al['p50_ci_ms'][1]:.2f}] | {one['runs']} / {al['runs']} |")
    return "\n".join(lines)
