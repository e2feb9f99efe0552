"""benchmark: accuracy and latency parity of every exported variant against the run's Keras model."""


def benchmark(run=None, **options):
    """Measure the run's Keras model and every exported variant (or `variants="a,b"`) on its test split,
    write runs/<name>/benchmark/report.{md,json,csv} and plots, and judge the parity gate; returns a
    BenchmarkResult (its `passed` and `failures` are the gate's verdict; nothing is raised for a miss).
    The keywords are the options of `edgeclf benchmark` (runlib/options.py)."""
    from export.variants import from_names
    from runlib import model_card
    from runlib.options import collect, resolve
    from runlib.results import BenchmarkResult
    from runlib.run_folder import resolve_run
    from runlib.scratch import tidy

    from .evaluate import measure_all, record_settings

    config = resolve("benchmark", collect("benchmark", options, options.pop("config", None)))  # passed down as is
    from_names(config.variants)  # an unknown name fails before any slow work
    run = resolve_run(run or config.run)
    with run.lock("benchmark"):
        tidy(run)
        rows, context = measure_all(run, config)
        if config.tune:
            record_settings(run, rows)
        written = _write_report(run, config, rows, context)
        model_card.write(run)
        return BenchmarkResult(run, written)


def _write_report(run, config, rows, context):
    """The gate's verdict on the measured rows, then report.{md,json,csv} and the plots."""
    from runlib.metrics import images_to_judge

    from . import report
    from .decisions import gate_decisions
    from .evaluate import gate

    failures = gate(rows, config.max_drop, config.min_agreement, config.max_class_drop, config.class_images,
                    config.robustness_min_agreement)
    gate_decisions(rows, failures, config.min_agreement, config.max_ece_gap)
    needed, rule = images_to_judge(config.max_drop, config.min_agreement)
    verdict = {"max_drop": config.max_drop, "min_agreement": config.min_agreement,
               "max_class_drop": config.max_class_drop, "class_images": config.class_images,
               "robustness_min_agreement": config.robustness_min_agreement, "enforced": config.enforce,
               "max_ece_gap": config.max_ece_gap,
               "failures": failures, "images": context["test_images"], "images_needed": needed, "rule": rule,
               # a clear miss fails on any number of images; a pass needs enough of them to mean anything
               "inconclusive": not failures and context["test_images"] < needed,
               "inconclusive_accepted": config.accept_inconclusive}
    return report.write(run, rows, context, verdict, pixels=run.test_set("test")[2])
