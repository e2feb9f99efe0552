"""Finding, checking and splitting the images. No TensorFlow here.

A dataset is a list of (path, label) samples from a class-per-folder tree or a
`filename,label` CSV. Every file is decoded once with the preprocessing contract's own
loader; the ones that fail are skipped and counted by reason in the data report.
"""
import csv
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.files import sha256_file
from edge_runtime.preprocess import decode

from runlib.split import SUBSETS, Sample  # noqa: F401  (the dataset is a list of Samples)



def _check_image(path):
    """(None, perceptual hashes) if the file decodes as an image, else (a short reason, None)."""
    from .duplicates import perceptual_hashes

    try:
        return None, perceptual_hashes(decode(path))
    except InputError as e:
        msg = str(e)
        return (msg.split(": ", 1)[1] if ": " in msg else msg), None


def check_label(label, where):
    """A class name is one line of labels.txt: refused (one line) if it holds a line break or other control character."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in label):
        raise InputError(f"{where}: label {label!r} contains a line break or control character")
    return label


def _is_hidden(p):
    return any(part.startswith(".") for part in p.parts)


def list_folder(root):
    """(relative path, label) for every file under root/<label>/, hidden files aside."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data folder {root} does not exist or is not a folder")
    entries, empty = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in class_dir.rglob("*") if f.is_file() and not _is_hidden(f.relative_to(root)))
        if not files:
            empty.append(class_dir.name)
        label = check_label(class_dir.name, f"class folder {class_dir}")
        entries += [(f.relative_to(root).as_posix(), label) for f in files]
    return entries, empty


def list_csv(csv_path, root):
    """(relative path, label) from a CSV with columns filename,label (header optional)."""
    csv_path, root = Path(csv_path), Path(root)
    if not csv_path.is_file():
        raise InputError(f"CSV file {csv_path} does not exist")
    if not root.is_dir():
        raise InputError(f"image root {root} does not exist or is not a folder")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"CSV file {csv_path} is not readable text CSV ({e})") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] in (
            ["filename", "label"], ["file", "label"], ["path", "label"], ["image", "label"]):
        rows = rows[1:]
    entries = []
    for i, r in enumerate(rows, 1):
        if len(r) < 2 or not r[0].strip() or not r[1].strip():
            raise InputError(f"CSV file {csv_path}, row {i}: expected filename,label, got {r!r}")
        entries.append((r[0].strip(), check_label(r[1].strip(), f"CSV file {csv_path}, row {i}")))
    if not entries:
        raise InputError(f"CSV file {csv_path} lists no images")
    return entries, []


def scan(entries, root, empty_classes=(), workers=8, progress=False):
    """Decode every listed file; return (samples, report). Bad files are counted, not fatal.
    progress: show files checked and the time left."""
    from runlib.progress import Progress

    root = Path(root)

    def check(entry):
        rel, label = entry
        path = root / rel
        if not path.resolve().is_relative_to(resolved_root):  # a CSV may name ../ or /absolute paths
            return rel, label, "outside the data folder", "", None
        if not path.is_file():
            return rel, label, "missing file", "", None
        reason, hashes = _check_image(path)
        return rel, label, reason, "" if reason else sha256_file(path), hashes

    samples, skipped, resolved_root = [], [], root.resolve()
    shown = Progress("train", len(entries), "files checked") if progress else None
    with ThreadPoolExecutor(workers) as pool:
        for i, (rel, label, reason, digest, hashes) in enumerate(pool.map(check, entries), 1):
            if reason:
                skipped.append({"path": rel, "label": label, "reason": reason})
            else:
                samples.append(Sample(rel, label, digest, phash=hashes))
            if shown and (i % 50 == 0 or i == len(entries)):
                shown.update(i, f"{len(skipped)} skipped")
    counts = Counter(s.label for s in samples)
    all_labels = sorted(set(l for _, l in entries) | set(empty_classes))
    report = {
        "root": str(root),
        "files_listed": len(entries),
        "images_used": len(samples),
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(_reason_kind(s["reason"]) for s in skipped)),
        "skipped_files": skipped,
        "per_class": {l: counts.get(l, 0) for l in all_labels},
    }
    return samples, report


def _reason_kind(reason):
    for kind in ("missing file", "not an image", "unreadable image", "outside the data folder", "too large"):
        if reason.startswith(kind):
            return kind
    return reason


def validate_classes(report, val_frac, test_frac):
    """Raise one clear error for an unusable class layout."""
    per_class = report["per_class"]
    if len(per_class) < 2:
        raise InputError(f"need at least 2 classes, found {len(per_class)} in {report['root']}")
    empty = [c for c, n in per_class.items() if n == 0]
    if empty:
        raise InputError(f"class {empty[0]!r} has no usable images ({len(empty)} empty class(es): {', '.join(empty)})")
    need = 1 + (val_frac > 0) + (test_frac > 0)
    small = [(c, n) for c, n in per_class.items() if n < need]
    if small:
        c, n = small[0]
        raise InputError(f"class {c!r} has {n} usable image(s); at least {need} are needed to split it into train/val/test")


def split(samples, val_frac=0.15, test_frac=0.15, seed=0, groups=None):
    """Stratified split: every class is shuffled with the seed and cut the same way.

    groups: lists of samples that go to one subset together (copies of one photo, train/duplicates.py);
    None, each sample alone. A group counts for the class most of its images have. Each class gets at
    least one group in every non-empty subset, so small classes are still evaluated. Same samples and seed
    give the same split on any machine, and with no copies the same split as each sample alone.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise InputError(f"val ({val_frac}) and test ({test_frac}) fractions must be in [0, 1) and sum below 1")
    by_class = defaultdict(list)
    for g in groups if groups is not None else [[s] for s in samples]:
        g = sorted(g, key=lambda s: s.path)
        labels = Counter(s.label for s in g)
        by_class[min(labels, key=lambda l: (-labels[l], l))].append(g)
    for label in sorted(by_class):
        class_groups = sorted(by_class[label], key=lambda g: g[0].path)
        random.Random(f"{seed}:{label}").shuffle(class_groups)
        for subset, g in zip(_cut(label, class_groups, val_frac, test_frac), class_groups):
            for s in g:
                s.subset = subset
    return samples


def _cut(label, groups, val_frac, test_frac):
    """The subset of each of a class's shuffled groups: the first to test, the next to val, the rest to
    train, by image count, keeping at least one group for training."""
    n = sum(len(g) for g in groups)
    n_val = max(1, round(n * val_frac)) if val_frac > 0 else 0
    n_test = max(1, round(n * test_frac)) if test_frac > 0 else 0
    while n - n_val - n_test < 1:  # keep one training image
        if n_test >= n_val and n_test > 1:
            n_test -= 1
        elif n_val > 1:
            n_val -= 1
        else:
            raise InputError(f"class {label!r} has {n} image(s), too few to split")
    need = 1 + (n_val > 0) + (n_test > 0)
    if len(groups) < need:
        raise InputError(f"class {label!r} has {n} image(s) but only {len(groups)} distinct photo(s) once copies are "
                         f"grouped; at least {need} are needed to split it into train/val/test")
    subsets, counts = [], {"test": 0, "val": 0}
    for k, g in enumerate(groups):
        left = len(groups) - k  # this group and the ones after it
        if counts["test"] < n_test and left > 1 + (n_val > 0 and counts["val"] == 0):
            subset = "test"
        elif counts["val"] < n_val and left > 1:
            subset = "val"
        else:
            subset = "train"
        if subset != "train":
            counts[subset] += len(g)
        subsets.append(subset)
    return subsets


def undersample(samples, max_per_class, seed=0):
    """Cap the training split at max_per_class per class (val and test untouched)."""
    if not max_per_class:
        return samples
    if max_per_class < 1:
        raise InputError(f"--max-per-class must be at least 1, got {max_per_class}")
    by_class = defaultdict(list)
    for s in samples:
        if s.subset == "train":
            by_class[s.label].append(s)
    for label, group in by_class.items():
        group.sort(key=lambda s: s.path)
        random.Random(f"{seed}:undersample:{label}").shuffle(group)
        for s in group[max_per_class:]:
            s.subset = "unused"
    return samples


def class_weights(train_labels, num_classes):
    """scikit-learn's 'balanced' weights: n_samples / (n_classes * count)."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(train_labels)
    present = np.unique(y)
    w = compute_class_weight("balanced", classes=present, y=y)
    weights = {int(c): float(v) for c, v in zip(present, w)}
    return {i: weights.get(i, 1.0) for i in range(num_classes)}


def decoded_bytes(n_images, size):
    """Memory the decoded uint8 pixels of n images take in tf.data's cache."""
    return n_images * size[0] * size[1] * 3


def cache_in_memory(n_images, size, limit_gb):
    """Cache decoded pixels in memory when they fit the limit; otherwise cache nothing and decode each
    epoch again (a disk cache of decoded pixels would be as large as the limit says we cannot afford,
    and would fill the disk of a user with a big dataset)."""
    return decoded_bytes(n_images, size) <= limit_gb * 2**30
