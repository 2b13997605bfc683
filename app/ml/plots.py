"""PNG renderings of a job's metrics (matplotlib, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def confusion_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> bytes:
    """The confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    cm = np.asarray(matrix)
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        threshold = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    color="white" if cm[i, j] > threshold else "black",
                    fontsize=8,
                )
    return _png(fig)


def curves_png(epochs: Sequence[dict[str, float | None]], title: str) -> bytes:
    """Loss and accuracy per epoch, train and validation."""
    x = [e["epoch"] for e in epochs]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, ax in (
        ("train_loss", "train", loss_ax),
        ("val_loss", "val", loss_ax),
        ("train_accuracy", "train", acc_ax),
        ("val_accuracy", "val", acc_ax),
    ):
        ys = [e.get(key) for e in epochs]
        if any(y is not None for y in ys):
            ax.plot(x, [np.nan if y is None else y for y in ys], marker="o", label=label)
    loss_ax.set_title("loss")
    acc_ax.set_title("accuracy")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _png(fig)
