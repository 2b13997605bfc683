"""Linear probes on cached backbone features: the model before fine-tuning (a fresh head after one probe pass),
and LP-FT's head start (the fresh head trained for probe_epochs before the backbone starts to train)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from app.ml.architectures.base import BuiltModel
from app.ml.config import TrainConfig
from app.ml.data import SampleSet
from app.ml.engine import DeviceSetup, evaluate_head, extract_features, train_head_epoch
from app.ml.metrics import MetricAccumulator
from app.ml.optim import make_optimizer
from app.ml.trainer.context import TrainContext
from app.ml.trainer.loaders import batches

Features = tuple[torch.Tensor, torch.Tensor]  # what the head receives per image, and the labels

NOT_APPLICABLE = {"status": "not applicable", "reason": "the backbone has no pretrained weights (weights: none)"}


def backbone_features(
    built: BuiltModel,
    samples: SampleSet,
    cfg: TrainConfig,
    setup: DeviceSetup,
    should_stop: Callable[[], bool] = lambda: False,
) -> Features:
    """The head's inputs for every image of samples (evaluation transform, model in eval mode), and the labels."""
    loader = batches(samples, cfg, setup, False, built.preprocessing.interpolation)
    return extract_features(built.model, built.head, loader, setup, built.preprocessing, should_stop)


def features(ctx: TrainContext, samples: SampleSet) -> Features:
    return backbone_features(ctx.built, samples, ctx.cfg, ctx.setup, ctx.hooks.should_stop)


def summaries(
    evaluate_split: Callable[[Any], MetricAccumulator], class_names: list[str], **splits: Any
) -> dict[str, Any]:
    """Each split's metrics summary, for the splits that are not None."""
    return {name: evaluate_split(data).summary(class_names) for name, data in splits.items() if data is not None}


def probe_head(head: nn.Module, train: Features, cfg: TrainConfig, epochs: int) -> nn.Module:
    """A copy of the fresh head trained for `epochs` on cached features (the linear-probe pass)."""
    probe = copy.deepcopy(head)
    optimizer = make_optimizer(list(probe.named_parameters()), cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        train_head_epoch(probe, train[0], train[1], optimizer, None, loss_fn, cfg.batch_size, generator)
    return probe


def probe_baseline(
    ctx: TrainContext, fresh_head: nn.Module, train: Features, val: Features | None, test: Features | None
) -> dict[str, Any]:
    """Metrics before fine-tuning: the fresh head after one linear-probe pass, on val and test."""
    probe = probe_head(fresh_head, train, ctx.cfg, epochs=1)
    n = ctx.num_classes
    return {
        "status": "measured",
        **summaries(lambda f: evaluate_head(probe, f[0], f[1], n), ctx.class_names, val=val, test=test),
    }


def measure_baseline(ctx: TrainContext) -> tuple[dict[str, Any], dict[str, Features]]:
    """Metrics before fine-tuning: the pretrained backbone with a fresh head after one linear-probe pass.

    Also returns the backbone features it computed per split (empty when it measured nothing), for reuse.
    """
    if ctx.cfg.weights == "none":
        return NOT_APPLICABLE, {}
    if not ctx.cfg.baseline:
        return {"status": "skipped", "reason": "baseline: false"}, {}
    splits = ctx.splits
    feats = {
        name: features(ctx, s)
        for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))
        if s is not None
    }
    return probe_baseline(ctx, ctx.built.head, feats["train"], feats.get("val"), feats.get("test")), feats


def probe_before_finetuning(ctx: TrainContext, train_features: Features | None) -> None:
    """LP-FT: train the fresh head for cfg.probe_epochs on the frozen backbone's features (computed here unless
    the before-fine-tuning pass already did), so that fine-tuning starts from a trained head."""
    feats = train_features or features(ctx, ctx.splits.train)
    probe = probe_head(ctx.built.head, feats, ctx.cfg, ctx.cfg.probe_epochs)
    ctx.built.head.load_state_dict(probe.state_dict())


def before_fine_tuning(ctx: TrainContext) -> dict[str, Any]:
    """The before-fine-tuning metrics (measured once per job: a resumed attempt has them saved), then LP-FT's
    probe when cfg.probe_epochs asks for it (not on resume: the checkpoint restores the trained head)."""
    baseline = ctx.hooks.saved_baseline()
    feats: dict[str, Features] = {}
    if baseline is None:
        baseline, feats = measure_baseline(ctx)
        ctx.hooks.on_baseline(baseline)
    if ctx.cfg.probe_epochs and ctx.hooks.resume_state() is None:
        probe_before_finetuning(ctx, feats.get("train"))
    return baseline
