"""benchmark: accuracy and latency parity of every exported variant against the run's Keras model."""
import train  # noqa: F401  (sets the TensorFlow environment before any worker loads TensorFlow)


def benchmark(run=None, **options):
    """Measure the run's Keras model and every exported variant (or `variants="a,b"`) on its test split,
    write runs/<name>/benchmark/report.{md,json,csv} and plots, and judge the parity gate; returns a
    BenchmarkResult (its `passed` and `failures` are the gate's verdict; nothing is raised for a miss).
    The keywords are the options of `edgeclf benchmark` (train/shared/options.py)."""
    import shlex
    import sys
    from pathlib import Path

    from edge_runtime.errors import InputError
    from export.variants import select
    from train.shared.options import collect, defaults
    from train.shared.results import BenchmarkResult
    from train.shared.run_folder import resolve_run
    from train.shared.versions import package_versions

    from . import report
    from .evaluate import gate, measure_all, record_settings

    o = {**defaults("benchmark"), **collect("benchmark", options, options.pop("config", None))}
    if o["batch"] < 1 or o["min_runs"] < 1 or o["warmup"] < 0 or (o["threads"] is not None and o["threads"] < 1):
        raise InputError("--batch, --min-runs and --threads must be at least 1, --warmup at least 0")
    if not 0 <= o["min_agreement"] <= 1 or o["max_drop"] < 0:
        raise InputError("--min-agreement must be between 0 and 1 and --max-drop at least 0")
    select(o["variants"])  # an unknown name fails before any slow work
    run = resolve_run(run or o["run"])
    timing = {k: o[k] for k in ("warmup", "min_runs", "min_seconds", "ci", "max_seconds")}
    rows, context = measure_all(run, o["variants"], batch=o["batch"], timing=timing, threads=o["threads"], tune=o["tune"])
    if o["tune"]:
        record_settings(run, rows)
    failures = gate(rows, o["max_drop"], o["min_agreement"])
    verdict = {"max_drop": o["max_drop"], "min_agreement": o["min_agreement"], "enforced": o["enforce"],
               "failures": failures}
    versions = package_versions(("tensorflow", "tf-keras", "ai-edge-litert", "onnxruntime", "numpy", "Pillow"))
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])  # the process that wrote it
    return BenchmarkResult(run, report.write(run, rows, context, verdict, versions, command))
