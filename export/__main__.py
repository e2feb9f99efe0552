"""python -m export [--run runs/<name>] [--variants a,b] ..."""
import argparse
import sys

from . import __name__ as _pkg  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from edge_runtime.errors import InputError, exit_code


def main(argv=None):
    from .variants import VARIANTS

    p = argparse.ArgumentParser(prog="python -m export", description="Export a training run to TFLite and ONNX variants.")
    p.add_argument("--run", help="run folder (default: the newest finished run in runs/)")
    p.add_argument("--variants", help="comma-separated subset of: " + ", ".join(v.name for v in VARIANTS))
    p.add_argument("--calibration-images", type=int, default=300, help="representative images for int8 (default 300, or the whole training split if smaller)")
    p.add_argument("--qat-epochs", type=int,
                   help="quantization-aware fine-tuning epochs (default 2; 1 for the demo, to keep it within 10 minutes)")
    p.add_argument("--qat-lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration images' draw from the training split (default 0)")
    p.add_argument("--smoke-images", type=int, default=16, help="validation images compared with the Keras model after each conversion")
    g = p.add_argument_group("accuracy-aware fallback (integer variants; decided on the validation split)")
    g.add_argument("--no-fallback", dest="fallback", action="store_false",
                   help="quantize every op, even when the variant misses the parity budget")
    g.add_argument("--max-drop", type=float, default=1.0, help="budget: largest top-1 drop against Keras, points (default 1.0)")
    g.add_argument("--min-agreement", type=float, default=0.98, help="budget: smallest agreement with Keras (default 0.98)")
    g.add_argument("--fallback-seconds", type=float, default=180.0,
                   help="run the single-op search (after the float tail) only if ranking the ops should take at "
                        "most this long (default 180; about one quantization per op)")
    g.add_argument("--fallback-cap", type=float, default=0.25,
                   help="at most this share of the candidate ops stays float (default 0.25)")
    p.add_argument("--ranges", default="auto", metavar="auto|minmax|p99.99|p99.9[@FROM]",
                   help="activation ranges of tflite-int8 and onnx-int8: the calibrator's min/max, or a percentile of "
                        "the activations from FROM (a share of the ops, default 0) on. Default auto: min/max when it "
                        "meets the parity budget on the validation split, else the best there of p99.99 and of p99.9 "
                        "from 0, 0.25, 0.5 and 0.75 of the ops on")
    a = p.parse_args(argv)

    def body():
        from train.rundir import resolve_run
        from .exporter import export_run, log
        from .variants import select

        if a.calibration_images < 1 or a.smoke_images < 1 or (a.qat_epochs or 0) < 0 or a.seed < 0:
            raise InputError("--calibration-images and --smoke-images must be at least 1, --qat-epochs and --seed "
                             "at least 0")
        select(a.variants)  # an unknown name fails before any slow work
        from .ranges import candidates

        try:
            candidates(a.ranges)
        except ValueError as e:
            raise InputError(f"--ranges: {e}") from None
        run = resolve_run(a.run)
        log(f"run: {run.path}")
        if not 0 < a.fallback_cap <= 1 or not 0 <= a.min_agreement <= 1 or a.max_drop < 0 or a.fallback_seconds < 0:
            raise InputError("--fallback-cap must be in (0, 1], --min-agreement in [0, 1], --max-drop and "
                             "--fallback-seconds at least 0")
        from .fallback import Budget

        budget = Budget(a.max_drop, a.min_agreement, a.fallback_cap, a.fallback, a.fallback_seconds)
        manifest, failed = export_run(run, a.variants, calibration_images=a.calibration_images, qat_epochs=a.qat_epochs,
                                      qat_lr=a.qat_lr, smoke_images=a.smoke_images, budget=budget, seed=a.seed,
                                      ranges=a.ranges)
        log(f"manifest: {run.export_dir / 'manifest.json'}")
        if failed:
            print(f"error: export failed for {', '.join(failed)} (see the manifest and {run.export_dir}/*.error.log)",
                  file=sys.stderr)
            return 1
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
