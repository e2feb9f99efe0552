"""The built-in demo dataset: scikit-learn's real handwritten digits as an imbalanced RGB image tree.

It is written to disk as PNG files, one folder per class, so the demo runs through the
very code path user data does. Class sizes fall geometrically from 174 to 44 (4:1; docs/training.md says why
not steeper).
"""
from pathlib import Path

import numpy as np
from PIL import Image

from edge_runtime.files import write_text

LARGEST, SMALLEST, SIZE = 174, 44, 32


def class_sizes(num_classes=10):
    ratio = (SMALLEST / LARGEST) ** (1 / (num_classes - 1))
    return [int(round(LARGEST * ratio**i)) for i in range(num_classes)]


def make_demo(root, seed=0):
    """Write the demo tree under root (once; a complete tree of these class sizes is reused) and return root."""
    import shutil

    root = Path(root)
    marker = root / ".complete"
    version = f"complete: {','.join(map(str, class_sizes()))} seed {seed}\n"
    if marker.exists() and marker.read_text(encoding="utf-8") == version:
        return root
    if root.exists():  # an older or partial tree: start again
        shutil.rmtree(root)
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for digit, n in enumerate(class_sizes()):
        images = digits.images[digits.target == digit][:n]
        out = root / f"{digit}_{names[digit]}"
        out.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            ink = img / 16.0  # 0..1 ink density
            fg = rng.integers(120, 256, 3)  # coloured ink on a dark, tinted background
            bg = rng.integers(0, 60, 3)
            rgb = (bg + ink[..., None] * (fg - bg)).astype(np.uint8)
            Image.fromarray(rgb).resize((SIZE, SIZE), Image.BILINEAR).save(out / f"{i:04d}.png")
    write_text(marker, version)
    return root
