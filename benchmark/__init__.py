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
    from train.shared.metrics import images_to_judge
    from train.shared.options import collect, defaults
    from train.shared.results import BenchmarkResult
    from train.shared.run_folder import resolve_run
    from train.shared.versions import package_versions

    from . import report
    from .evaluate import gate, measure_all, record_settings

    o = {**defaults("benchmark"), **collect("benchmark", options, options.pop("config", None))}
    if o["batch"] < 1 or o["min_runs"] < 1 or o["warmup"] < 0 or (o["threads"] is not None and o["threads"] < 1):
        raise InputError("--batch, --min-runs and --threads must be at least 1, --warmup at least 0")
    if o["robustness_images"] < 1 or o["class_images"] < 0 or o["max_class_drop"] < 0:
        raise InputError("--robustness-images must be at least 1, --class-images and --max-class-drop at least 0")
    if not 0 <= o["min_agreement"] <= 1 or o["max_drop"] < 0:
        raise InputError("--min-agreement must be between 0 and 1 and --max-drop at least 0")
    select(o["variants"])  # an unknown name fails before any slow work
    run = resolve_run(run or o["run"])
    timing = {k: o[k] for k in ("warmup", "min_runs", "min_seconds", "ci", "max_seconds")}
    with run.lock("benchmark"):
        from train.shared.scratch import tidy

        tidy(run)
        rows, context = measure_all(run, o["variants"], batch=o["batch"], timing=timing, threads=o["threads"],
                                    tune=o["tune"], robustness=o["robustness_images"] if o["robustness"] else 0)
        if o["tune"]:
            record_settings(run, rows)
        failures = gate(rows, o["max_drop"], o["min_agreement"], o["max_class_drop"], o["class_images"],
                        o["robustness_min_agreement"])
        needed, rule = images_to_judge(o["max_drop"], o["min_agreement"])
        verdict = {"max_drop": o["max_drop"], "min_agreement": o["min_agreement"], "max_class_drop": o["max_class_drop"],
                   "class_images": o["class_images"], "robustness_min_agreement": o["robustness_min_agreement"],
                   "enforced": o["enforce"],
                   "failures": failures, "images": context["test_images"], "images_needed": needed, "rule": rule,
                   # a clear miss fails on any number of images; a pass needs enough of them to mean anything
                   "inconclusive": not failures and context["test_images"] < needed,
                   "inconclusive_accepted": o["accept_inconclusive"]}
        versions = package_versions(("tensorflow", "tf-keras", "ai-edge-litert", "onnxruntime", "numpy", "Pillow"))
        command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])  # the process that wrote it
        written = report.write(run, rows, context, verdict, versions, command, pixels=run.test_set("test")[2])
        from train.shared import model_card

        model_card.write(run)
        return BenchmarkResult(run, written)
