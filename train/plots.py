"""PNG figures: training curves and confusion matrices. Written atomically."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edge_runtime.files import atomic_path  # noqa: E402


def save(fig, path):
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def training_curves(history, path):
    """history: list of dicts with epoch, phase, loss, val_loss, accuracy, val_accuracy."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h["epoch"] for h in history]
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, [h.get(key) for h in history], "o-", label="train")
        ax.plot(epochs, [h.get("val_" + key) for h in history], "o-", label="val")
        boundary = [h["epoch"] for h in history if h["phase"] == 2]
        if boundary:
            ax.axvline(boundary[0] - 0.5, color="grey", ls="--", lw=1)
            ax.text(boundary[0] - 0.4, ax.get_ylim()[1], " fine-tune", va="top", color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path)


def confusion_matrices(panels, class_names, path):
    """panels: list of (title, confusion matrix). Rows are true classes, normalised per row."""
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
