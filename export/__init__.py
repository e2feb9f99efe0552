"""export: turn a training run into deployable TFLite and ONNX variants, listed in a manifest."""
import train  # noqa: F401  (sets the TensorFlow environment before anything imports it)


def export(run=None, **options):
    """Export a run (a folder, or the newest finished run) to every variant, or `variants="a,b"`; returns an
    ExportResult. The keywords are the options of `edgeclf export` (train/shared/options.py), e.g.
    export("runs/photos", variants="tflite-int8,onnx-int8", calibration_images=200, max_drop=1.0)."""
    from edge_runtime.errors import InputError
    from train.shared.options import collect, defaults
    from train.shared.results import ExportResult
    from train.shared.run_folder import resolve_run

    from .exporter import export_run
    from .fallback import Budget
    from .ranges import candidates
    from .variants import select

    o = collect("export", options, options.pop("config", None))
    run = resolve_run(run or o.get("run"))
    o = {**defaults("export", bool(run.config().get("demo"))), **o}
    if o["calibration_images"] < 1 or o["smoke_images"] < 1 or o["qat_epochs"] < 0 or o["seed"] < 0:
        raise InputError("--calibration-images and --smoke-images must be at least 1, --qat-epochs and --seed at least 0")
    if not 0 <= o["qat_labels"] <= 1:
        raise InputError(f"--qat-labels must be between 0 and 1, got {o['qat_labels']}")
    if not 0 < o["fallback_cap"] <= 1 or not 0 <= o["min_agreement"] <= 1 or o["max_drop"] < 0 or o["fallback_seconds"] < 0:
        raise InputError("--fallback-cap must be in (0, 1], --min-agreement in [0, 1], --max-drop and "
                         "--fallback-seconds at least 0")
    chosen = select(o["variants"])  # an unknown name fails before any slow work
    try:
        candidates(o["ranges"])
    except ValueError as e:
        raise InputError(f"--ranges: {e}") from None
    budget = Budget(o["max_drop"], o["min_agreement"], o["fallback_cap"], o["fallback"], o["fallback_seconds"],
                    o["max_class_drop"], o["class_images"])
    with run.lock("export"):
        manifest, failed = export_run(run, variants=chosen, calibration_images=o["calibration_images"],
                                      qat_epochs=o["qat_epochs"], qat_lr=o["qat_lr"], qat_labels=o["qat_labels"],
                                      smoke_images=o["smoke_images"],
                                      budget=budget, seed=o["seed"], ranges=o["ranges"],
                                      bias_correction=o["bias_correction"])
    return ExportResult(run, manifest, failed)
