"""python -m export [--run runs/<name>] [--variants a,b] ..."""
import argparse
import sys

from . import __name__ as _pkg  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from edge_runtime.errors import InputError


def main(argv=None):
    from .variants import VARIANTS

    p = argparse.ArgumentParser(prog="python -m export", description="Export a training run to TFLite and ONNX variants.")
    p.add_argument("--run", help="run folder (default: the newest finished run in runs/)")
    p.add_argument("--variants", help="comma-separated subset of: " + ", ".join(v.name for v in VARIANTS))
    p.add_argument("--calibration-images", type=int, default=300, help="representative images for int8 (default 300, or the whole training split if smaller)")
    p.add_argument("--qat-epochs", type=int, default=2, help="quantization-aware fine-tuning epochs")
    p.add_argument("--qat-lr", type=float, default=1e-5)
    p.add_argument("--smoke-images", type=int, default=16, help="validation images compared with the Keras model after each conversion")
    a = p.parse_args(argv)
    try:
        from train.rundir import resolve_run
        from .exporter import export_run, log
        from .variants import select

        if a.calibration_images < 1 or a.smoke_images < 1 or a.qat_epochs < 0:
            raise InputError("--calibration-images and --smoke-images must be at least 1, --qat-epochs at least 0")
        select(a.variants)  # an unknown name fails before any slow work
        run = resolve_run(a.run)
        log(f"run: {run.path}")
        manifest, failed = export_run(run, a.variants, calibration_images=a.calibration_images, qat_epochs=a.qat_epochs,
                                      qat_lr=a.qat_lr, smoke_images=a.smoke_images)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log(f"manifest: {run.export_dir / 'manifest.json'}")
    if failed:
        print(f"error: export failed for {', '.join(failed)} (see the manifest and {run.export_dir}/*.error.log)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
