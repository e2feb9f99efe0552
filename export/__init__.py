"""export: turn a training run into deployable TFLite and ONNX variants, listed in a manifest."""


def export(run=None, **options):
    """Export a run (a folder, or the newest finished run) to every variant, or `variants="a,b"`; returns an
    ExportResult. The keywords are the options of `edgeclf export` (runlib/options.py), e.g.
    export("runs/photos", variants="tflite-int8,onnx-int8", calibration_images=200, max_drop=1.0)."""
    from edge_runtime.errors import InputError
    from runlib.options import collect, resolve
    from runlib.results import ExportResult
    from runlib.run_folder import resolve_run

    from .exporter import export_run
    from .ranges import candidates
    from .variants import from_names

    explicit = collect("export", options, options.pop("config", None))
    run = resolve_run(run or explicit.get("run"))
    config = resolve("export", explicit, demo=bool(run.config().get("demo")))  # the one ExportConfig passed down
    chosen = from_names(config.variants)  # an unknown name fails before any slow work
    try:
        candidates(config.ranges)
    except ValueError as e:
        raise InputError(f"--ranges: {e}") from None
    with run.lock("export"):
        manifest, failed = export_run(run, config, chosen)
    return ExportResult(run, manifest, failed)
