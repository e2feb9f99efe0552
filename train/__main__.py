"""`python -m train [options]` trains; `python -m train preview-augment [options]` writes an augmentation grid."""
import sys

from . import config  # noqa: F401  (sets TF_USE_LEGACY_KERAS via the package)
from edge_runtime.errors import InputError, exit_code


def preview_main(argv):
    import argparse
    from pathlib import Path

    from .data import list_folder, scan

    p = argparse.ArgumentParser(prog="python -m train preview-augment", description="PNG grid of augmented training samples")
    p.add_argument("--data", help="class-per-folder image tree (default: the demo dataset)")
    p.add_argument("--image-size", default="224")
    p.add_argument("--augment", type=float, default=1.0, help="strength")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="include random mirror images")
    p.add_argument("--count", type=int, default=6, help="how many images (rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="augment_preview.png")
    a = p.parse_args(argv)
    if not a.data:
        from .demo import make_demo
        a.data = str(make_demo(Path("data") / "demo-digits"))
    entries, _ = list_folder(a.data)
    samples, _ = scan(entries[:: max(1, len(entries) // (a.count * 3))][: a.count * 3], a.data)
    if not samples:
        raise InputError(f"no readable images in {a.data}")
    from edge_runtime.preprocess import load_pixels
    from .augment import preview
    from .config import parse_size
    size = parse_size(a.image_size)
    preview([load_pixels(Path(a.data) / s.path, size) for s in samples[: a.count]], a.augment, a.out, seed=a.seed, flip=a.flip)
    print(f"wrote {a.out}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    def body():
        if argv and argv[0] == "preview-augment":
            return preview_main(argv[1:])
        from .fit import train
        train(config.parser().parse_args(argv))

    try:
        return exit_code(body)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
