"""Confidence and abstention, measured: calibration error, the separation of known from unknown, risk and coverage.

All take probabilities already calibrated and a threshold on the top probability (edge_runtime.decision).
"""
import numpy as np


def nll(y, probs):
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.mean(np.log(p))) if len(y) else float("nan")


def ece(y, probs, bins=15):
    """Expected calibration error of the top probability: equal-width bins, weighted by their image count."""
    if not len(y):
        return float("nan")
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    err = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            err += m.mean() * abs(float((pred[m] == y[m]).mean()) - float(conf[m].mean()))
    return float(err)


def reliability(y, probs, bins=10):
    """[(bin centre, mean confidence, accuracy, images)] for a reliability diagram."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        if m.any():
            rows.append(((edges[b] + edges[b + 1]) / 2, float(conf[m].mean()), float((pred[m] == y[m]).mean()),
                         int(m.sum())))
    return rows


def auroc(positive_scores, negative_scores):
    """P(a positive scores above a negative), ties counted half: how well a score separates the two."""
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(positive_scores, float), np.asarray(negative_scores, float)
    if not len(pos) or not len(neg):
        return float("nan")
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def risk_coverage(y, probs):
    """(coverage, selective accuracy) as the threshold on the top probability sweeps from high to low."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum(correct[order])
    n = np.arange(1, len(y) + 1)
    return n / max(len(y), 1), hits / n


def selective(y, probs, answered):
    """Figures of a decision on labelled images, y = -1 for images the model must not name:
    coverage and accuracy of the answers on known images, and the share of unknown images named."""
    y, answered = np.asarray(y), np.asarray(answered, bool)
    known, unknown = y >= 0, y < 0
    pred = probs.argmax(1) if len(y) else np.zeros(0, int)
    out = {"known_images": int(known.sum()), "unknown_images": int(unknown.sum())}
    if known.any():
        right = pred[known] == y[known]
        ans = answered[known]
        out.update(top1=float(right.mean()), coverage=float(ans.mean()),
                   selective_accuracy=float(right[ans].mean()) if ans.any() else float("nan"),
                   correct_answers=float((right & ans).mean()))
    if unknown.any():
        out["unknown_named"] = float(answered[unknown].mean())
    return out
