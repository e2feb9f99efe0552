"""Copies in a dataset, found before it is split, so that no photo lands in training and in test at once.

- Exact copies (the same SHA-256) are one group, split as one. The same bytes under two labels is a
  conflict: every copy is left out of training and evaluation, and reported.
- Near copies (resized, recompressed, brightened, or cropped by a few percent on each side) are found by
  a perceptual hash: the signs of the lowest 8x8 DCT coefficients of a 32x32 grayscale thumbnail, 64
  bits, of the whole image and of its central 90%. Two images are near copies when the closest pair of
  those hashes differs in at most NEAR bits. By default near copies are grouped for the split too
  (--no-group-near-duplicates reports them only). docs/training.md has what the hash catches and misses.
"""
from collections import defaultdict

import numpy as np

NEAR = 6  # bits of 64
CROP = 0.05  # the second hash: 5% off each side
EXAMPLES = 10


def _phash(img):
    from PIL import Image
    from scipy.fft import dctn

    a = np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), np.float32)
    d = dctn(a, norm="ortho")[:8, :8].ravel()
    return int(np.packbits(d > np.median(d[1:])).view(">u8")[0])


def perceptual_hashes(img):
    """(hash of the whole image, hash of its central 90%) of a decoded PIL image."""
    w, h = img.size
    inner = img.crop((round(w * CROP), round(h * CROP), round(w * (1 - CROP)), round(h * (1 - CROP))))
    return _phash(img), _phash(inner)


def near_pairs(hashes, threshold=NEAR, chunk=1024):
    """[(i, j, bits)] for i < j whose hashes are within `threshold` bits (whole against whole, or either's
    central crop against the other's whole), compared in chunks so memory stays bounded."""
    full = np.array([h[0] for h in hashes], np.uint64)
    inner = np.array([h[1] for h in hashes], np.uint64)
    out = []
    for start in range(0, len(full), chunk):
        f, c = full[start:start + chunk, None], inner[start:start + chunk, None]
        d = np.minimum(np.minimum(np.bitwise_count(f ^ full[None]), np.bitwise_count(c ^ full[None])),
                       np.bitwise_count(f ^ inner[None]))
        rows, cols = np.nonzero(d <= threshold)
        for r, col in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < col:
                out.append((i, col, int(d[r, col])))
    return out


class _Union:
    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i, j):
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def group(samples, hashes, near=True, threshold=NEAR):
    """(kept samples, groups as lists of kept samples, report). Conflicting exact copies are dropped."""
    by_sha = defaultdict(list)
    for i, s in enumerate(samples):
        by_sha[s.sha256].append(i)
    conflicts = [ids for ids in by_sha.values() if len({samples[i].label for i in ids}) > 1]
    dropped = {i for ids in conflicts for i in ids}
    u = _Union(len(samples))
    exact = [ids for ids in by_sha.values() if len(ids) > 1 and ids not in conflicts]
    for ids in exact:
        for i in ids[1:]:
            u.join(ids[0], i)
    pairs = [p for p in near_pairs(hashes, threshold) if p[0] not in dropped and p[1] not in dropped
             and samples[p[0]].sha256 != samples[p[1]].sha256]
    if near:
        for i, j, _ in pairs:
            u.join(i, j)
    members = defaultdict(list)
    for i, s in enumerate(samples):
        if i not in dropped:
            members[u.find(i)].append(s)
    groups = [sorted(g, key=lambda s: s.path) for g in members.values()]
    return [s for i, s in enumerate(samples) if i not in dropped], groups, _report(samples, exact, conflicts, pairs,
                                                                                   (near, threshold), groups)


def _report(samples, exact, conflicts, pairs, near_rule, groups):
    """The data report's "duplicates" record; near_rule: (near copies grouped?, the hash distance in bits)."""
    near, threshold = near_rule
    cross = [p for p in pairs if samples[p[0]].label != samples[p[1]].label]
    return {
        "exact_groups": len(exact), "exact_copies": sum(len(g) - 1 for g in exact),
        "conflicts": [{"sha256": samples[ids[0]].sha256, "files": [samples[i].path for i in ids],
                       "labels": sorted({samples[i].label for i in ids})} for ids in conflicts],
        "conflicting_files": sum(len(ids) for ids in conflicts),
        "near_pairs": len(pairs), "near_pairs_across_classes": len(cross), "near_threshold_bits": threshold,
        "grouped_for_split": {"exact": True, "near": bool(near)},
        "groups_of_two_or_more": sum(len(g) > 1 for g in groups),
        "images_in_such_groups": sum(len(g) for g in groups if len(g) > 1),
        "examples": [{"a": samples[i].path, "b": samples[j].path, "bits": d} for i, j, d in
                     sorted(pairs, key=lambda p: (p[2], samples[p[0]].path))[:EXAMPLES]],
        "exact_examples": [[samples[i].path for i in ids] for ids in exact[:EXAMPLES]],
    }
