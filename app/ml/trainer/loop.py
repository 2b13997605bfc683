"""The epoch loop both training paths share: train, validate, keep the best weights, report, stop early."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from app.ml.engine import EpochStats, StepCallback
from app.ml.metrics import MetricAccumulator
from app.ml.optim import EarlyStopping
from app.ml.trainer.context import TrainContext
from app.ml.trainer.hooks import EpochReport
from app.ml.trainer.resume import Progress, Trainable, restore_training_state, snapshot, training_state


def run_epochs(
    ctx: TrainContext,
    trainable: Trainable,
    train_epoch: Callable[[StepCallback], EpochStats],
    validate: Callable[[], MetricAccumulator | None],
    *,
    flops_per_image: float | None = None,
    peak: float | None = None,
    extra_seconds: Callable[[int], float] = lambda _epoch: 0.0,
) -> Progress:
    """Epochs 1..cfg.epochs (after the resumed one, if any) until early stopping; each is reported to the hooks
    with a way to checkpoint it. The best epoch's weights are loaded back into the module at the end.

    flops_per_image and the device's peak rate give each epoch's achieved TFLOP/s and MFU; extra_seconds(epoch)
    adds work done outside train_epoch to that epoch's time. train_epoch gets the callback its steps report
    to (the hooks' on_progress, with the epoch filled in).
    """
    cfg, hooks = ctx.cfg, ctx.hooks
    progress = Progress(
        EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta), snapshot(trainable.module)
    )
    first = 1
    resume = hooks.resume_state()
    if resume is not None:
        first = restore_training_state(resume, progress, trainable) + 1

    for epoch in range(first, cfg.epochs + 1):
        if progress.stopped_early:
            break
        lr = max(group["lr"] for group in trainable.optimizer.param_groups)
        start = time.perf_counter()
        stats = train_epoch(functools.partial(hooks.on_progress, epoch, cfg.epochs))
        val = validate()
        seconds = time.perf_counter() - start + extra_seconds(epoch)
        stats = EpochStats(stats.loss, stats.accuracy, stats.images, seconds)
        is_best = progress.record(epoch, val, stats, trainable.module)
        tflops = mfu = None
        if flops_per_image:
            achieved = flops_per_image * ctx.strategy.flops_factor
            tflops = achieved * stats.images_per_second / 1e12
            mfu = tflops * 1e12 / peak if peak else None
        progress.epochs_run = epoch
        progress.stopped_early = progress.stopper.update(val.accuracy if val else None)
        report = EpochReport(
            epoch,
            stats,
            val.loss if val else None,
            val.accuracy if val else None,
            lr,
            seconds,
            is_best,
            tflops,
            mfu,
        )
        hooks.on_epoch(report, ctx.built, functools.partial(training_state, epoch, progress, trainable))

    trainable.module.load_state_dict(progress.best_state)
    return progress
