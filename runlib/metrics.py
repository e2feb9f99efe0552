"""Classification metrics shared by training's evaluation and the benchmark. No TensorFlow."""
import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, recall_score


def top_k_accuracy(y_true, probs, k):
    topk = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean([y in row for y, row in zip(y_true, topk)]))


def classification_metrics(y_true, probs, class_names):
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(axis=1)
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out = {
        "n": int(len(y_true)),
        "top1": float(np.mean(y_pred == y_true)),
        "top5": top_k_accuracy(y_true, probs, 5) if len(class_names) >= 5 else None,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "per_class_recall": {name: float(r) for name, r in zip(class_names, recall)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    out["most_confused"] = most_confused(out["confusion_matrix"], class_names)
    return out


# Above this many classes a confusion matrix is no longer readable: reports show the most confused
# pairs and the worst per-class recalls instead.
MATRIX_LIMIT = 30


def most_confused(cm, class_names, k=20):
    """The k largest off-diagonal cells: true class, predicted class, count, and share of the true class."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = cm.sum(axis=1)
    pairs = []
    for flat in order:
        i, j = divmod(int(flat), cm.shape[1])
        if off[i, j] == 0:
            break
        pairs.append({"true": class_names[i], "predicted": class_names[j], "count": int(off[i, j]),
                      "share": float(off[i, j] / max(rows[i], 1))})
    return pairs


def worst_recall(per_class_recall, k=20):
    """(class, recall) pairs, worst first (ties in name order)."""
    return sorted(per_class_recall.items(), key=lambda kv: (kv[1], kv[0]))[:k]


def agreement(probs, reference_probs):
    """How far a variant's outputs are from the reference model's on the same images."""
    probs, ref = np.asarray(probs, np.float64), np.asarray(reference_probs, np.float64)
    diff = np.abs(probs - ref)
    return {
        "agreement": float(np.mean(probs.argmax(1) == ref.argmax(1))),
        "prob_mean_abs_diff": float(diff.mean()),
        "prob_max_abs_diff": float(diff.max()),
    }


# The parity budget: the benchmark's gate and export's accuracy-aware fallback share it.
PARITY = {"max_drop": 1.0, "min_agreement": 0.98}


def images_to_judge(max_drop=PARITY["max_drop"], min_agreement=PARITY["min_agreement"], z=1.959964):
    """The fewest test images on which the parity gate can judge, and why: (count, rule).

    Two conditions. One image must move top-1 by no more than the drop budget (100 / n <= max_drop points),
    or a variant one image behind the reference already fails on resolution alone. And a variant that agrees
    on every image must be shown, at 95% (Wilson), to agree on more than 1 - 2(1 - min_agreement): twice the
    budget's allowed disagreement excluded. With the defaults (1 point, 0.98): 100 and 93 images, so 100.
    """
    import math

    top1 = math.ceil(100.0 / max_drop - 1e-9) if max_drop > 0 else 0
    low = min(max(1.0 - 2.0 * (1.0 - min_agreement), 0.0), 0.99)
    agree = math.ceil(z * z * low / (1.0 - low) - 1e-9) if low > 0 else 0
    return max(top1, agree), (f"one image must move top-1 by at most {max_drop:g} point(s): {top1} images; full agreement "
                              f"must exclude {low:.2f} at 95% (Wilson): {agree} images")


def parity_misses(drop_points, agree, max_drop=PARITY["max_drop"], min_agreement=PARITY["min_agreement"]):
    """Reasons a variant misses the budget (empty when it holds). drop_points: its top-1 minus the reference's."""
    reasons = []
    if drop_points < -max_drop - 1e-9:
        reasons.append(f"top-1 {drop_points:+.2f} points (limit -{max_drop:g})")
    if agree < min_agreement - 1e-12:
        reasons.append(f"agreement {agree:.3f} (limit {min_agreement:g})")
    return reasons


def wilson_interval(successes, n, z=1.959964):
    """95% Wilson score interval for a rate (agreement); sound at 0 and 1, unlike the normal approximation."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def paired_delta_interval(correct, reference_correct, resamples=4000, seed=0):
    """95% paired-bootstrap interval of the top-1 change in points (same images resampled for both models)."""
    a, b = np.asarray(correct, float), np.asarray(reference_correct, float)
    if len(a) == 0:
        return (0.0, 0.0)
    idx = np.random.default_rng(seed).integers(0, len(a), (resamples, len(a)))
    deltas = 100.0 * (a[idx].mean(1) - b[idx].mean(1))
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return (float(lo), float(hi))


def mcnemar_p(correct, reference_correct):
    """Exact two-sided McNemar p-value: do the two models' errors differ more than chance on these images?"""
    from math import comb

    a, b = np.asarray(correct, bool), np.asarray(reference_correct, bool)
    gained, lost = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = gained + lost
    if n == 0:
        return 1.0
    k = min(gained, lost)
    return float(min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n))


# The per-class budget: a class fails when it loses more than this many images net AND more than this many
# points of recall (docs/benchmark.md says why both).
CLASS_PARITY = {"max_class_drop": 10.0, "class_images": 2}


def class_parity(y, probs, ref_probs, class_names):
    """{class: {"n", "recall", "reference_recall", "change_points", "lost", "gained", "p"}}: each class's
    recall beside the reference's on the same images, the images it lost (right for the reference, wrong
    here) and gained, and the exact two-sided sign test of lost against gained (McNemar's within the class)."""
    y = np.asarray(y)
    pred, ref = np.asarray(probs).argmax(1), np.asarray(ref_probs).argmax(1)
    out = {}
    for c, name in enumerate(class_names):
        idx = y == c
        n = int(idx.sum())
        mine, theirs = pred[idx] == c, ref[idx] == c
        out[name] = {"n": n, "recall": float(mine.mean()) if n else None,
                     "reference_recall": float(theirs.mean()) if n else None,
                     "change_points": 100.0 * float(mine.mean() - theirs.mean()) if n else 0.0,
                     "lost": int(np.sum(theirs & ~mine)), "gained": int(np.sum(mine & ~theirs)),
                     "p": mcnemar_p(mine, theirs)}
    return out


def class_misses(parity, max_class_drop=CLASS_PARITY["max_class_drop"], class_images=CLASS_PARITY["class_images"]):
    """Reasons for the classes whose recall dropped past the per-class budget, worst first."""
    bad = [(name, c) for name, c in parity.items()
           if c["n"] and c["lost"] - c["gained"] > class_images and -c["change_points"] > max_class_drop + 1e-9]
    bad.sort(key=lambda nc: nc[1]["change_points"])
    return [f"class {name}: recall {c['recall']:.3f} against {c['reference_recall']:.3f} ({c['change_points']:+.1f} "
            f"points, {c['lost'] - c['gained']} of {c['n']} images lost net; budget {max_class_drop:g} points and "
            f"{class_images} images)" for name, c in bad]
