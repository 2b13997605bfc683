"""Classification metrics from a confusion matrix: accuracy, top-5, per-class and macro P/R/F1."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class MetricAccumulator:
    """Accumulates loss, top-5 hits and a confusion matrix over batches of logits.

    The sums stay on the logits' device and are read once, when a figure is asked for: copying every
    batch to the host would make each CUDA evaluation step wait for the previous one.
    """

    def __init__(self, num_classes: int, keep_predictions: bool = False) -> None:
        self.num_classes = num_classes
        self.count = 0
        self._loss_sum: torch.Tensor | None = None
        self._top5_hits: torch.Tensor | None = None
        self._confusion: torch.Tensor | None = None
        # With keep_predictions, each image's (true class, predicted class, predicted-class probability), in
        # the order the batches came: what the confusion matrix counts, image by image.
        self.keep_predictions = keep_predictions
        self._kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor | float) -> None:
        """Add a batch: its logits, integer targets and the batch's summed (not mean) loss."""
        logits = logits.detach().float()
        targets = targets.detach().to(logits.device)
        if self._confusion is None or self._top5_hits is None or self._loss_sum is None:
            self._confusion = torch.zeros(self.num_classes**2, dtype=torch.int64, device=logits.device)
            self._top5_hits = torch.zeros((), dtype=torch.int64, device=logits.device)
            self._loss_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
        predicted = logits.argmax(dim=1)
        if self.keep_predictions:
            confidence = logits.softmax(dim=1).gather(1, predicted.unsqueeze(1)).squeeze(1)
            self._kept.append((targets.clone(), predicted, confidence))
        flat = targets * self.num_classes + predicted
        self._confusion += torch.bincount(flat, minlength=self.num_classes**2)
        if self.num_classes > 5:
            top5 = logits.topk(5, dim=1).indices
            self._top5_hits += (top5 == targets.unsqueeze(1)).any(dim=1).sum()
        self._loss_sum += torch.as_tensor(loss_sum, dtype=torch.float64, device=logits.device).detach()
        self.count += len(targets)

    @property
    def confusion(self) -> torch.Tensor:
        """Rows are true classes, columns predicted ones (on the host)."""
        if self._confusion is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self._confusion.cpu().view(self.num_classes, self.num_classes)

    def predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true classes int64, predicted classes int64, predicted-class probabilities float32) per image, in
        the order seen (empty unless keep_predictions)."""
        if not self._kept:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        true, predicted, confidence = (torch.cat(parts).cpu() for parts in zip(*self._kept, strict=True))
        return true.long().numpy(), predicted.long().numpy(), confidence.float().numpy()

    @property
    def loss_sum(self) -> float:
        return float(self._loss_sum) if self._loss_sum is not None else 0.0

    @property
    def top5_hits(self) -> int:
        return int(self._top5_hits) if self._top5_hits is not None else 0

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
        # Row/column i of confusion_matrix is class_names[i]. Clients read the order from here, not from the keys
        # of per_class: a JSON object's key order is not kept everywhere (JavaScript lists integer-like keys such as
        # "9" and "10" numerically first, while an ImageFolder's classes are sorted as strings: "10" before "9").
        "class_names": list(class_names),
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


def class_order(summary: dict[str, Any]) -> list[str]:
    """The class names of a summary, in class-index order: its `class_names`, else (summaries stored before that
    field) the keys of `per_class`, which were written in that order."""
    names = summary.get("class_names")
    return list(names) if names else list(summary.get("per_class") or ())
