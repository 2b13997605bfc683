"""fit(): a whole fine-tuning run, from a config and data splits to the best weights and their metrics.

Two paths: strategies that train on cached features (linear) train the head alone on backbone features computed
once; the others (partial, full, lora) measure the model before fine-tuning, optionally give the head a head start
(LP-FT), then train on augmented images.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn

from app.ml.augment import BatchMixer
from app.ml.backbones import build_model
from app.ml.config import TrainConfig
from app.ml.data import SampleSet
from app.ml.engine import DeviceSetup, evaluate, evaluate_head, train_head_epoch, train_one_epoch
from app.ml.flops import forward_flops, peak_flops
from app.ml.metrics import MetricAccumulator
from app.ml.optim import class_weights, make_optimizer, make_scheduler, stage_depths
from app.ml.strategies import STRATEGIES
from app.ml.trainer.baseline import NOT_APPLICABLE, before_fine_tuning, features, probe_baseline, summaries
from app.ml.trainer.context import TrainContext
from app.ml.trainer.hooks import FitResult, TrainingHooks, ValPredictions
from app.ml.trainer.loaders import batches, decoded_splits, loader_generators
from app.ml.trainer.loop import run_epochs
from app.ml.trainer.resume import Trainable


def fit(
    cfg: TrainConfig,
    class_names: list[str],
    splits: dict[str, SampleSet],
    hooks: TrainingHooks,
    setup: DeviceSetup | None = None,
) -> FitResult:
    """Train per cfg, reporting each epoch to hooks; the best epoch (val accuracy) is evaluated on val and test."""
    ctx = prepare(cfg, class_names, splits, hooks, setup or DeviceSetup.for_device())
    if ctx.strategy.feature_cache:
        result = fit_on_features(ctx)
    else:
        baseline = before_fine_tuning(ctx)
        result = fine_tune(ctx)
        result.baseline = baseline
    result.flops_per_image = ctx.flops_per_image
    return result


def prepare(
    cfg: TrainConfig, class_names: list[str], splits: dict[str, SampleSet], hooks: TrainingHooks, setup: DeviceSetup
) -> TrainContext:
    """Seed the global generators, build the model on the device, count its FLOPs, split and decode the data."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    built = build_model(cfg.arch, len(class_names), cfg.weights)
    memory_format = torch.channels_last if setup.channels_last else torch.contiguous_format
    built.model.to(setup.device, memory_format=memory_format)  # type: ignore[call-overload]  # torch's stubs lack it
    flops = forward_flops(built.model, cfg.image_size, setup.device)
    strategy = STRATEGIES.get(cfg.strategy)
    return TrainContext(cfg, strategy, built, class_names, decoded_splits(splits, cfg), hooks, setup, flops)


def training_loss(ctx: TrainContext) -> nn.Module:
    """Cross-entropy with the config's label smoothing and class weights (from the training labels)."""
    weights = class_weights(ctx.splits.train.labels, ctx.num_classes, ctx.cfg.class_weighting)
    return nn.CrossEntropyLoss(
        weight=weights.to(ctx.setup.device) if weights is not None else None, label_smoothing=ctx.cfg.label_smoothing
    )


def fit_on_features(ctx: TrainContext) -> FitResult:
    """Frozen backbone: features are computed once, then only the head trains (no augmentation)."""
    cfg, built, hooks, splits = ctx.cfg, ctx.built, ctx.hooks, ctx.splits
    ctx.strategy.apply(built, cfg)
    n = ctx.num_classes
    start = time.perf_counter()
    train_x, train_y = features(ctx, splits.train)
    val_f = features(ctx, splits.val) if splits.val is not None else None
    extraction = time.perf_counter() - start

    head = built.head
    fresh_head = copy.deepcopy(head)  # for the before-fine-tuning probe
    optimizer = make_optimizer(list(head.named_parameters()), cfg)
    scheduler = make_scheduler(optimizer, cfg, math.ceil(len(train_y) / cfg.batch_size))
    loss_fn = training_loss(ctx)
    generator = torch.Generator().manual_seed(cfg.seed)
    progress = run_epochs(
        ctx,
        Trainable(head, optimizer, scheduler, generators={"head": generator}),
        lambda on_step: train_head_epoch(
            head,
            train_x,
            train_y,
            optimizer,
            scheduler,
            loss_fn,
            cfg.batch_size,
            generator,
            hooks.should_stop,
            on_step,
        ),
        lambda: evaluate_head(head, val_f[0], val_f[1], n) if val_f is not None else None,
        # The feature pass is the real work of a linear probe: its time is counted in the first epoch.
        extra_seconds=lambda epoch: extraction if epoch == 1 else 0.0,
    )

    test = splits.test
    test_f = features(ctx, test) if test is not None and len(test) else None
    metrics = summaries(lambda f: evaluate_head(head, f[0], f[1], n), ctx.class_names, test=test_f)
    val = evaluate_head(head, val_f[0], val_f[1], n, keep_predictions=True) if val_f is not None else None
    baseline = NOT_APPLICABLE
    if cfg.weights != "none":
        baseline = probe_baseline(ctx, fresh_head, (train_x, train_y), val_f, test_f)
    return FitResult(
        progress.best_epoch,
        val.summary(ctx.class_names) if val is not None else None,
        metrics.get("test"),
        progress.epochs_run,
        baseline,
        progress.stopped_early,
        resumed_from=progress.resumed_from,
        val_predictions=val_predictions(val, splits.val),
    )


def val_predictions(val: MetricAccumulator | None, samples: SampleSet | None) -> ValPredictions | None:
    """The best weights' per-image validation predictions, numbered by the images' refs."""
    if val is None or samples is None:
        return None
    return ValPredictions.of(val, samples.refs)


def fine_tune(ctx: TrainContext) -> FitResult:
    """partial / full / lora: the backbone (or its adapters) train with the head on augmented images."""
    cfg, built, hooks, setup, splits = ctx.cfg, ctx.built, ctx.hooks, ctx.setup, ctx.splits
    n = ctx.num_classes
    if not ctx.strategy.apply(built, cfg):
        raise ValueError("the strategy leaves no trainable parameters")
    prep = built.preprocessing
    model = built.model
    runner: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
    train_batches = batches(splits.train, cfg, setup, True, prep.interpolation)
    val_batches = batches(splits.val, cfg, setup, False, prep.interpolation) if splits.val is not None else None
    depths = None if built.lora else stage_depths(built)
    optimizer = make_optimizer([(nm, p) for nm, p in model.named_parameters() if p.requires_grad], cfg, depths)
    scheduler = make_scheduler(optimizer, cfg, len(train_batches))
    scaler = torch.amp.GradScaler(setup.device.type) if setup.needs_scaler() else None
    loss_fn = training_loss(ctx)
    mixer = BatchMixer(n, cfg.mixup_prob, cfg.cutmix_prob, torch.Generator().manual_seed(cfg.seed + 1))
    progress = run_epochs(
        ctx,
        Trainable(model, optimizer, scheduler, scaler, {"mixer": mixer.generator, **loader_generators(train_batches)}),
        lambda on_step: train_one_epoch(
            runner,
            train_batches,
            optimizer,
            scheduler,
            loss_fn,
            setup,
            prep,
            hooks.should_stop,
            scaler,
            cfg.grad_clip,
            mixer if mixer.active else None,
            on_step,
        ),
        lambda: evaluate(runner, val_batches, setup, prep, n, hooks.should_stop) if val_batches else None,
        flops_per_image=ctx.flops_per_image,
        peak=peak_flops(setup.device, setup.amp_dtype is not None),
    )

    test = splits.test
    test_batches = batches(test, cfg, setup, False, prep.interpolation) if test is not None and len(test) else None
    metrics = summaries(lambda b: evaluate(runner, b, setup, prep, n), ctx.class_names, test=test_batches)
    # Validation batches come in the split's order (never shuffled), so prediction i is splits.val's image i.
    val = evaluate(runner, val_batches, setup, prep, n, keep_predictions=True) if val_batches else None
    return FitResult(
        progress.best_epoch,
        val.summary(ctx.class_names) if val is not None else None,
        metrics.get("test"),
        progress.epochs_run,
        stopped_early=progress.stopped_early,
        resumed_from=progress.resumed_from,
        val_predictions=val_predictions(val, splits.val),
    )
