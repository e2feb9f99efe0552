"""Photos from outside the training source: `--field DIR` and `--unknown DIR`.

A field folder holds one folder per species. A folder named like one of the run's classes counts as that class;
any other folder holds a species the model must not name. An unknown folder holds only images the model must
not name (other species, empty frames, other objects), in any layout.

`half(path)` splits a field folder into two fixed halves by a hash of each image's path inside it: "dev", on
which training choices may be compared, and "holdout", on which they are reported. No threshold or calibration
is ever fitted on either.
"""
import hashlib
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import InputError
from edge_runtime.inputs import expand

UNKNOWN = -1  # the label of an image whose species the model must not name


@dataclass(frozen=True)
class Photos:
    """Paths, their class index (UNKNOWN for a species outside the classes), and the folder names of each."""
    root: Path
    paths: list
    labels: list
    known_folders: list
    unknown_folders: list


def _images(folder):
    """The image files under folder as the runtime's own walk finds them: in name order, hidden names left out,
    symlinked folders not entered (a link back up would never end), each file once."""
    return [Path(p) for p in expand([str(folder)])]


def read_field(folder, classes):
    """Photos of a class-per-folder field set; InputError when the folder is missing or holds no image."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: no such field folder")
    index = {c: i for i, c in enumerate(classes)}
    paths, labels, known, unknown = [], [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = _images(sub)
        if not found:
            continue
        (known if sub.name in index else unknown).append(sub.name)
        paths += found
        labels += [index.get(sub.name, UNKNOWN)] * len(found)
    if not paths:
        raise InputError(f"{root}: no images in class folders (a field set is one folder per species)")
    return Photos(root, paths, labels, known, unknown)


def read_unknown(folder):
    """Photos of a folder of images none of which the model may name."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder of unknown images")
    paths = _images(root)
    if not paths:
        raise InputError(f"{root}: no images")
    return Photos(root, paths, [UNKNOWN] * len(paths), [], [root.name])


def pixels_of(photos, size, fit, what, log):
    """(uint8 pixels, indices into photos.paths) of the readable photos; bad ones are skipped and counted."""
    import numpy as np

    from edge_runtime.preprocess import load_pixels

    pixels, kept = [], []
    for i, p in enumerate(photos.paths):
        try:
            pixels.append(load_pixels(p, size, fit))
            kept.append(i)
        except InputError:
            continue
    if len(kept) < len(photos.paths):
        log(f"{what}: {len(photos.paths) - len(kept)} of {len(photos.paths)} images unreadable, skipped")
    if not kept:
        raise InputError(f"{photos.root}: no readable image among {len(photos.paths)}")
    return np.stack(pixels), kept


def half(photos, path):
    """'dev' or 'holdout': a fixed half of a field folder, by the hash of the path inside it."""
    rel = Path(path).relative_to(photos.root).as_posix()
    return "dev" if hashlib.sha256(rel.encode()).digest()[0] % 2 == 0 else "holdout"
