"""Optimizers with discriminative learning rates, learning-rate schedules, class weights, early stopping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import torch
from torch import nn

from app.ml.architectures.base import BuiltModel
from app.ml.config import Schedule, TrainConfig

SCHEDULES: tuple[str, ...] = get_args(Schedule)


def stage_depths(built: BuiltModel) -> dict[str, int]:
    """Parameter name -> depth below the head (0 = head, 1 = last backbone stage, ...)."""
    n = len(built.stages)
    depths = {name: n - i for i, stage in enumerate(built.stages) for name in stage}
    for name in built.head_param_names:
        depths[name] = 0
    return depths


def param_groups(
    named: list[tuple[str, nn.Parameter]], cfg: TrainConfig, depths: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """One group per (depth, decay): lr × lr_decay^depth; norms and biases get no weight decay."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named:
        # Parameters outside every stage map (LoRA adapters, extra norms) train at the last stage's rate.
        depth = (depths or {}).get(name.removeprefix("base_model.model."), 1 if depths else 0)
        decay = p.ndim > 1
        key = (depth, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": cfg.learning_rate * (cfg.lr_decay**depth),
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "depth": depth,
            }
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def make_optimizer(
    named: list[tuple[str, nn.Parameter]], cfg: TrainConfig, depths: dict[str, int] | None = None
) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov) over discriminative parameter groups."""
    groups = param_groups(named, cfg, depths)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of each group's base lr at a step."""
    if schedule == "onecycle":
        # Warm up from lr/25 over `warmup` steps (30% when unset), then cosine down to lr/1e4.
        warmup = warmup or max(1, int(0.3 * total))
        if step < warmup:
            return 1 / 25 + (1 - 1 / 25) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: cosine or constant after a linear warmup, or one-cycle."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, cfg.schedule))


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
    """'balanced': n_samples / (n_classes × n_c), so rare classes weigh more; None for 'none'."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without a val accuracy gain larger than min_delta."""

    patience: int | None
    min_delta: float = 0.0
    best: float = -math.inf
    stale: int = 0

    def update(self, score: float | None) -> bool:
        """Record an epoch's score; True when training should stop."""
        if self.patience is None or score is None:
            return False
        if score > self.best + self.min_delta:
            self.best, self.stale = score, 0
        else:
            self.stale += 1
        return self.stale >= self.patience
