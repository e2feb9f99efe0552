"""split.csv: which image of the dataset went to train, val or test, with its SHA-256. Written once by
training; export and benchmark read it and never split again."""
import csv
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import InputError

SUBSETS = ("train", "val", "test")


@dataclass
class Sample:
    path: str  # relative to the data root, with forward slashes
    label: str
    sha256: str = ""
    subset: str = ""  # train, val, test, or unused (dropped by undersampling)
    phash: tuple = None  # perceptual hashes while scanning (train/duplicates.py); not written to split.csv


def write_split(path, samples):
    from edge_runtime.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "subset", "sha256"])
        for s in sorted(samples, key=lambda s: (SUBSETS.index(s.subset) if s.subset in SUBSETS else 3, s.label, s.path)):
            w.writerow([s.path, s.label, s.subset, s.sha256])


def read_split(path):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"split file {path} is missing")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"path", "label", "subset", "sha256"}:
        raise InputError(f"split file {path} is not a split written by train")
    return [Sample(r["path"], r["label"], r["sha256"], r["subset"]) for r in rows]
