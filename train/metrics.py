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
    return out


def agreement(probs, reference_probs):
    """How far a variant's outputs are from the reference model's on the same images."""
    probs, ref = np.asarray(probs, np.float64), np.asarray(reference_probs, np.float64)
    diff = np.abs(probs - ref)
    return {
        "agreement": float(np.mean(probs.argmax(1) == ref.argmax(1))),
        "prob_mean_abs_diff": float(diff.mean()),
        "prob_max_abs_diff": float(diff.max()),
    }
