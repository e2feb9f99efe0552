"""PNG figures: training curves and confusion matrices. Written atomically."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from edge_runtime.files import atomic_path


def save(fig, path):
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def training_curves(history, path):
    """history: dicts with phase, epoch, loss, val_loss, accuracy, val_accuracy (and C for probe rows).

    Probe rows (phase 1 solved as a logistic regression) are drawn against C on a panel of
    their own; epochs of gradient descent against the epoch.
    """
    probe = [h for h in history if h.get("C") is not None]
    epochs = [h for h in history if h.get("C") is None]
    panels = ([("probe", "loss"), ("probe", "accuracy")] if probe else []) + \
             ([("epochs", "loss"), ("epochs", "accuracy")] if epochs else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (kind, key) in zip(axes[0], panels):
        if kind == "probe":
            cs = [h["C"] for h in probe]
            ax.plot(cs, [h.get(key) for h in probe], "o-", label="train")
            ax.plot(cs, [h.get("val_" + key) for h in probe], "o-", label="val")
            chosen = [h["C"] for h in probe if h.get("chosen")]
            if chosen:
                ax.axvline(chosen[0], color="grey", ls="--", lw=1, label=f"chosen C={chosen[0]:.3g}")
            ax.set_xscale("log")
            ax.set_xlabel("C (inverse regularisation)")
            ax.set_title(f"phase 1: head fitted to convergence, {key}")
        else:
            xs = list(range(1, len(epochs) + 1))
            ax.plot(xs, [h.get(key) for h in epochs], "o-", label="train")
            ax.plot(xs, [h.get("val_" + key) for h in epochs], "o-", label="val")
            boundary = [i for i, h in zip(xs, epochs) if h["phase"] == 2]
            if boundary and boundary[0] > 1:
                ax.axvline(boundary[0] - 0.5, color="grey", ls="--", lw=1)
                ax.text(boundary[0] - 0.4, ax.get_ylim()[1], " fine-tune", va="top", color="grey")
            ax.set_xlabel("epoch" + (" (phase 2)" if boundary and boundary[0] == 1 else ""))
            ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path)


def confusion_matrices(panels, class_names, path):
    """panels: list of (title, confusion matrix). Rows are true classes, normalised per row.

    With more classes than a matrix can show readably, each panel becomes two bar charts instead:
    the most confused pairs and the worst per-class recalls.
    """
    from .metrics import MATRIX_LIMIT

    if len(class_names) > MATRIX_LIMIT:
        return confusion_summary(panels, class_names, path)
    n = len(panels)
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, axes = plt.subplots(1, n, figsize=((size + 1.5) * n, size), squeeze=False, layout="constrained")
    for ax, (title, cm) in zip(axes[0], panels):
        cm = np.asarray(cm, dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    save(fig, path)


def confusion_summary(panels, class_names, path, k=20):
    """Per panel: the k most confused pairs (true -> predicted) and the k worst per-class recalls."""
    from .metrics import most_confused, worst_recall

    fig, axes = plt.subplots(len(panels), 2, figsize=(14, 0.28 * k * len(panels) + 1.5 * len(panels)), squeeze=False,
                             layout="constrained")
    for (left, right), (title, cm) in zip(axes, panels):
        cm = np.asarray(cm)
        pairs = most_confused(cm, class_names, k)
        left.barh(range(len(pairs)), [p["count"] for p in pairs], color="tab:red")
        left.set_yticks(range(len(pairs)), [f"{p['true']} \u2192 {p['predicted']}" for p in pairs], fontsize=7)
        left.invert_yaxis()
        left.set_xlabel("images")  # validation or test, as the panel's title says
        left.set_title(f"{title}: most confused pairs (true \u2192 predicted)", fontsize=9)
        recall = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
        worst = worst_recall(dict(zip(class_names, recall.tolist())), k)
        right.barh(range(len(worst)), [r for _, r in worst], color="tab:blue")
        right.set_yticks(range(len(worst)), [c for c, _ in worst], fontsize=7)
        right.invert_yaxis()
        right.set_xlim(0, 1)
        right.set_xlabel("recall")
        right.set_title(f"the {len(worst)} worst of {len(class_names)} classes by recall", fontsize=9)
    save(fig, path)
