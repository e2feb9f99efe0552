"""`edgeclf train` and `edgeclf preview-augment` as commands: options in, a line or two and an exit code out."""
import argparse

from edge_runtime.errors import InputError


def run_command(o):
    """`edgeclf train`: options by name (runlib/options.py)."""
    from . import train

    r = train(**o)
    return 0 if r.run else 1


def add_preview(sub):
    p = sub.add_parser("preview-augment", help="a PNG grid of augmented training samples",
                       description="A PNG grid of augmented training samples.")
    p.add_argument("--data", help="class-per-folder image tree (default: the demo dataset)")
    p.add_argument("--image-size", default="224", help="input size (default 224)")
    p.add_argument("--augment", type=float, default=1.0, help="strength (default 1)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="include random mirror images")
    p.add_argument("--augment-style", choices=("basic", "field"), default="basic", help="as in train (default basic)")
    p.add_argument("--resize", choices=("squash", "crop"), default="crop", help="as in train (default crop)")
    p.add_argument("--count", type=int, default=6, help="how many images (rows; default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="augment_preview.png")
    p.set_defaults(handler=preview_run, command="preview-augment")


def preview_run(a):
    from pathlib import Path

    from edge_runtime.preprocess import load_pixels

    from .augment import preview
    from .config import parse_size
    from .data import list_folder, scan

    if not a.data:
        from .demo import make_demo

        a.data = str(make_demo(Path("data") / "demo-digits"))
    entries, _ = list_folder(a.data)
    samples, _ = scan(entries[:: max(1, len(entries) // (a.count * 3))][: a.count * 3], a.data)
    if not samples:
        raise InputError(f"no readable images in {a.data}")
    size = parse_size(a.image_size)
    preview([load_pixels(Path(a.data) / s.path, size, a.resize) for s in samples[: a.count]], a.augment, a.out,
            seed=a.seed, flip=a.flip, style=a.augment_style)
    print(f"wrote {a.out}")
    return 0
