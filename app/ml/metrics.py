"""Classification metrics from a confusion matrix: accuracy, top-5, per-class and macro P/R/F1."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class MetricAccumulator:
    """Accumulates loss, top-k hits and a confusion matrix over batches of logits."""

    num_classes: int
    loss_sum: float = 0.0
    count: int = 0
    top5_hits: int = 0
    confusion: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: float) -> None:
        logits = logits.detach().float().cpu()
        targets = targets.detach().cpu()
        preds = logits.argmax(dim=1)
        flat = targets * self.num_classes + preds
        self.confusion += torch.bincount(flat, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)
        if self.num_classes > 5:
            top5 = logits.topk(5, dim=1).indices
            self.top5_hits += int((top5 == targets.unsqueeze(1)).any(dim=1).sum())
        self.loss_sum += loss_sum
        self.count += len(targets)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def accuracy(self) -> float:
        return float(self.confusion.diag().sum()) / max(self.count, 1)

    def summary(self, class_names: list[str]) -> dict[str, Any]:
        """Everything a user wants to know about a split, as plain JSON."""
        return summarize_confusion(self.confusion, class_names, self.loss, self.top5_hits, self.count)


def summarize_confusion(
    confusion: torch.Tensor, class_names: list[str], loss: float | None, top5_hits: int, count: int
) -> dict[str, Any]:
    cm = confusion.double()
    tp = cm.diag()
    predicted = cm.sum(dim=0)
    actual = cm.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    present = actual > 0  # macro averages over the classes that occur in this split
    n_present = max(int(present.sum()), 1)
    result: dict[str, Any] = {
        "count": count,
        "loss": loss,
        "accuracy": float(tp.sum() / max(count, 1)),
        "top5_accuracy": top5_hits / max(count, 1) if len(class_names) > 5 else None,
        "macro_precision": float(precision[present].sum()) / n_present,
        "macro_recall": float(recall[present].sum()) / n_present,
        "macro_f1": float(f1[present].sum()) / n_present,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion.tolist(),
    }
    return result
