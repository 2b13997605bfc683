"""Run one job on a worker: claim it, train it with app.ml's fit under a lease, and record the outcome.

The job's state is app.job_state's: the claim bumps `attempt` (the fencing token), the lease keeper renews the
lease and watches for a cancel while fit trains, and every write names the attempt, so a stale worker stops
(LeaseLost) without writing anything. Each epoch's checkpoint files and rows are the CheckpointStore's
(worker/checkpoints.py), which also picks the state a re-claimed job resumes from.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import events, job_state
from app.config import Settings, get_settings
from app.db import after_commit, make_engine, make_sessionmaker, session_scope
from app.job_state import LeaseLost
from app.ml.architectures.base import BuiltModel
from app.ml.config import TrainConfig
from app.ml.data import load_splits
from app.ml.engine import DeviceSetup, TrainingStopped
from app.ml.strategies import export_state_dict
from app.ml.trainer import EpochReport, FitResult, TrainingState, fit
from app.models import Dataset, Epoch, Job, JobStatus
from app.schemas import training_config
from app.services import predictions
from app.services.exports import queue_exports
from app.services.registry import register_version
from worker import shutdown
from worker.checkpoints import CheckpointStore
from worker.lease import LeaseKeeper, with_db_retry
from worker.progress import EpochPace, epoch_event
from worker.telemetry import TrainingTelemetry

log = logging.getLogger("visiontune.runner")

T = TypeVar("T")

# Errors a later attempt can get past (the database or broker was unreachable); anything else fails at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    ConnectionError,
    TimeoutError,
)
# Recording a retry that fails with one of these is left to the reaper (the lease runs out).
UNRECORDED_RETRY: tuple[type[BaseException], ...] = (LeaseLost, *TRANSIENT_ERRORS)


@dataclass
class RunnerHooks:
    """What fit() reports each epoch goes to SQL and disk, under this attempt's fence."""

    runner: JobRunner
    job: Job
    attempt: int
    config: TrainConfig
    class_names: list[str]
    keeper: LeaseKeeper
    store: CheckpointStore
    resume: TrainingState | None = None
    baseline: dict[str, Any] | None = None
    built: BuiltModel | None = field(default=None, repr=False)
    pace: EpochPace = field(default_factory=EpochPace)
    telemetry: TrainingTelemetry | None = None

    def should_stop(self) -> bool:
        return self.keeper.should_stop()

    def on_progress(
        self, epoch: int, epochs: int, step: int, steps: int, images: int, loss: Callable[[], float]
    ) -> None:
        """A progress event, at most one per events_progress_interval_seconds (the loss is read only then)."""
        self.pace.step(epoch, step, images)
        if self.telemetry is not None:
            self.telemetry.step(self.pace.rates()[1])
        publisher = events.publisher()
        if publisher is None or not publisher.progress_due(self.job.id):
            return
        rate, images_per_second = self.pace.rates()
        data = {
            "epoch": epoch,
            "epochs": epochs,
            "step": step,
            "steps": steps,
            "loss": loss(),
            "images_per_second": images_per_second,
            "eta_seconds": self.pace.eta(epoch, epochs, step, steps, rate),
        }
        publisher.publish(self.job.id, "progress", data)

    def on_epoch(self, report: EpochReport, built: BuiltModel, state: Callable[[], TrainingState]) -> None:
        self.built = built
        self.runner.record_epoch(self, report, built, state())
        self.pace.epoch_seconds.append(report.seconds)
        if self.telemetry is not None:
            self.telemetry.epoch(report)
        events.publish(self.job.id, "epoch", epoch_event(report))

    def resume_state(self) -> TrainingState | None:
        return self.resume

    def saved_baseline(self) -> dict[str, Any] | None:
        return self.baseline

    def on_baseline(self, baseline: dict[str, Any]) -> None:
        self.runner.with_db_retry(lambda: self.runner.save_baseline(self.job.id, self.attempt, baseline))


class JobRunner:
    """Runs jobs for one worker process."""

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        worker_id: str | None = None,
        enqueue: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        # Sends a requeued job's task at once; without it the reaper sends it on its next sweep.
        self.enqueue = enqueue
        # Sends the export tasks a succeeded job asked for (`exports`); without it they stay queued.
        self.enqueue_export: Callable[[uuid.UUID], None] | None = None

    # ------------------------------------------------------------ lease

    def claim(self, job_id: uuid.UUID) -> int | None:
        """Take a queued job (app.job_state.claim); the new attempt number, or None if it is not ours."""
        with session_scope(self.factory) as s:
            return job_state.claim(s, job_id, self.worker_id, self.settings.lease_seconds)

    def renew_lease(self, job_id: uuid.UUID, attempt: int) -> bool:
        try:
            with session_scope(self.factory) as s:
                job_state.fenced_write(s, job_id, attempt, self.settings.lease_seconds)
            return True
        except LeaseLost:
            return False

    def cancel_requested(self, job_id: uuid.UUID) -> bool:
        with session_scope(self.factory) as s:
            return job_state.cancel_requested(s, job_id)

    def with_db_retry(self, action: Callable[[], T]) -> T:
        """Run a unit of work, retrying while the database is unreachable, for at most lease_seconds."""
        return with_db_retry(action, self.settings.lease_seconds)

    # ------------------------------------------------------------ the run

    def run(self, job_id: uuid.UUID) -> str:
        """Train job_id if it can be claimed; returns the outcome in one word (also counted in the metrics)."""
        telemetry = TrainingTelemetry()
        outcome = "error"  # what the metrics count when _run raises (the job's record is then the reaper's)
        try:
            outcome = self._run(job_id, telemetry)
        finally:
            telemetry.finished(outcome)
        return outcome

    def _run(self, job_id: uuid.UUID, telemetry: TrainingTelemetry) -> str:
        attempt = self.with_db_retry(lambda: self.claim(job_id))
        if attempt is None:
            log.info("job %s is not claimable (finished, canceled, waiting to retry or owned by a worker)", job_id)
            return "skipped"
        log.info("job %s: attempt %s claimed by %s", job_id, attempt, self.worker_id)
        keeper = LeaseKeeper(
            f"lease-{job_id}",
            self.settings.lease_seconds,
            renew=lambda: self.renew_lease(job_id, attempt),
            canceled=lambda: self.cancel_requested(job_id),
        )
        keeper.start()
        try:
            # After the claim and inside the handlers: a device that cannot be set up (a CUDA init error) fails
            # this job with its message instead of raising out of the task.
            setup = DeviceSetup.for_device()
            telemetry.on_device(setup.device)
            with session_scope(self.factory) as s:
                job = s.get(Job, job_id)
                assert job is not None
                dataset = s.get(Dataset, job.dataset_id)
                assert dataset is not None
                dataset_path = Path(dataset.path)
            config = training_config(job.config)
            store = CheckpointStore(
                self.settings.checkpoints_dir, self.factory, job_id, attempt, self.settings.lease_seconds
            )
            resume = self.with_db_retry(store.resume)
            class_names, splits = load_splits(dataset_path)
            hooks = RunnerHooks(self, job, attempt, config, class_names, keeper, store, resume, job.baseline_metrics)
            hooks.telemetry = telemetry
            result = fit(config, class_names, splits, hooks, setup)
            self.with_db_retry(lambda: self.finish_success(job, attempt, result, hooks))
            return "succeeded"
        except (TrainingStopped, LeaseLost):
            if keeper.lost.is_set() or not (keeper.cancel.is_set() or shutdown.requested()):
                log.warning("job %s attempt %s lost its lease; stopping without writing", job_id, attempt)
                return "lease-lost"
            if keeper.cancel.is_set():
                self.finish(job_id, attempt, JobStatus.canceled, error=job_state.CANCELED_BY_REQUEST)
                return "canceled"
            return self.release(job_id, attempt)
        except TRANSIENT_ERRORS as exc:
            log.exception("job %s attempt %s hit a transient error", job_id, attempt)
            return self.retry_later(job_id, attempt, f"{exc.__class__.__name__}: {exc}")
        except Exception as exc:
            log.exception("job %s failed", job_id)
            self.finish(job_id, attempt, JobStatus.failed, error=f"{exc.__class__.__name__}: {exc}")
            return "failed"
        finally:
            keeper.stop()
            keeper.join(timeout=10)
            release_device_memory()

    # ------------------------------------------------------------ per-epoch records

    def record_epoch(self, hooks: RunnerHooks, report: EpochReport, built: BuiltModel, state: TrainingState) -> None:
        """Checkpoint files (atomic), then epoch + checkpoint rows (fenced), then the files retention let go."""
        job, attempt, store = hooks.job, hooks.attempt, hooks.store
        metadata = self._metadata(hooks, built, report.epoch, report.val_accuracy)
        saved = store.save(report.epoch, export_state_dict(built), metadata, state)

        def unit() -> list[Path]:
            with session_scope(self.factory) as s:
                lease = self.settings.lease_seconds
                job_state.fenced_write(s, job.id, attempt, lease, last_epoch=report.epoch, last_step=state["step"])
                if s.scalar(select(Epoch.id).where(Epoch.job_id == job.id, Epoch.epoch == report.epoch)) is not None:
                    return []  # an earlier try of this very write committed before the connection dropped
                s.add(
                    Epoch(
                        job_id=job.id,
                        epoch=report.epoch,
                        attempt=attempt,
                        train_loss=report.train.loss,
                        train_accuracy=report.train.accuracy,
                        val_loss=report.val_loss,
                        val_accuracy=report.val_accuracy,
                        learning_rate=report.learning_rate,
                        seconds=report.seconds,
                        images_per_second=report.train.images_per_second,
                        tflops=report.tflops,
                        mfu=report.mfu,
                    )
                )
                return store.record(s, saved, val_accuracy=report.val_accuracy, is_best=report.is_best)

        store.discard(self.with_db_retry(unit))

    def _metadata(
        self, hooks: RunnerHooks, built: BuiltModel, epoch: int, val_accuracy: float | None = None
    ) -> dict[str, Any]:
        cfg = hooks.config
        return {
            "arch": cfg.arch,
            "class_names": hooks.class_names,
            "image_size": cfg.image_size,
            "preprocessing": built.preprocessing.as_dict(),
            "config": cfg.as_dict(),
            "job_id": str(hooks.job.id),
            "attempt": hooks.attempt,
            "epoch": epoch,
            "val_accuracy": val_accuracy,
        }

    def save_baseline(self, job_id: uuid.UUID, attempt: int, baseline: dict[str, Any]) -> None:
        with session_scope(self.factory) as s:
            job_state.fenced_write(s, job_id, attempt, self.settings.lease_seconds, baseline_metrics=baseline)

    # ------------------------------------------------------------ outcomes

    def finish_success(self, job: Job, attempt: int, result: FitResult, hooks: RunnerHooks) -> None:
        """Succeeded (fenced), the best checkpoint on disk, its version registered and its exports queued: one
        unit of work; the export tasks are sent after it commits."""

        def model() -> BuiltModel:  # set by every epoch fit reported (needed only to write a pruned best again)
            assert hooks.built is not None
            return hooks.built

        with session_scope(self.factory) as s:
            job_state.succeed(
                s,
                job.id,
                attempt,
                best_epoch=result.best_epoch,
                val_metrics=result.val_metrics,
                test_metrics=result.test_metrics,
                baseline_metrics=result.baseline or None,
                flops_per_image=result.flops_per_image,
            )
            if result.val_predictions is not None:  # under the same fence, in the same unit as the outcome
                predictions.record(s, job.id, result.val_predictions)
            best = hooks.store.best(
                s,
                lambda: export_state_dict(model()),
                lambda epoch, val_accuracy: self._metadata(hooks, model(), epoch, val_accuracy),
            )
            fresh = s.get(Job, job.id)
            assert fresh is not None
            test_acc = result.test_metrics["accuracy"] if result.test_metrics else None
            version = register_version(s, fresh, best, test_acc)
            send = self.enqueue_export
            export_ids = queue_exports(s, version, list(fresh.config.get("exports") or []), sent=send is not None)
            if send is not None:
                after_commit(s, lambda: [send(export_id) for export_id in export_ids])

    def finish(self, job_id: uuid.UUID, attempt: int, status: str, error: str) -> None:
        """Record that the attempt failed for good (status failed) or stopped on a cancel (canceled); a stale
        attempt's outcome is logged and dropped."""

        def unit() -> None:
            with session_scope(self.factory) as s:
                if status == JobStatus.canceled:
                    job_state.confirm_cancel(s, job_id, attempt)
                else:
                    job_state.fail(s, job_id, attempt, error)

        try:
            self.with_db_retry(unit)
        except LeaseLost:
            log.warning("job %s attempt %s: not recording %s, another attempt owns the job", job_id, attempt, status)

    def release(self, job_id: uuid.UUID, attempt: int) -> str:
        """Graceful shutdown: the last epoch's checkpoint stands; hand the job back to the queue (or cancel it)."""

        def unit() -> JobStatus:
            with session_scope(self.factory) as s:
                return job_state.release(s, job_id, attempt, sent=self.enqueue is not None)

        try:
            status = self.with_db_retry(unit)
        except LeaseLost:
            return "lease-lost"
        outcome = "requeued" if status == JobStatus.queued else str(status)
        if outcome == "requeued" and self.enqueue is not None:
            self.enqueue(job_id)
        log.info("job %s attempt %s released on shutdown: %s", job_id, attempt, outcome)
        return outcome

    def retry_later(self, job_id: uuid.UUID, attempt: int, error: str) -> str:
        """A transient error: the lost attempt goes through app.job_state.retry_or_give_up (queued after the
        backoff, failed once the attempts are spent, canceled if asked); returns 'retrying' or the final status."""

        def unit() -> JobStatus:
            with session_scope(self.factory) as s:
                return job_state.retry_or_give_up(s, self.settings, job_id, attempt, f"failed: {error}")

        try:
            status = self.with_db_retry(unit)
        except UNRECORDED_RETRY:
            # Still unreachable: the lease runs out and the reaper counts the attempt instead.
            log.warning("job %s attempt %s: could not record the retry; the reaper will", job_id, attempt)
            return "lease-lost"
        return "retrying" if status == JobStatus.queued else str(status)


def release_device_memory() -> None:
    """Hand cached GPU memory back between jobs (the worker process lives on)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_runner: JobRunner | None = None


def get_runner(enqueue: Callable[[uuid.UUID], None] | None = None) -> JobRunner:
    """This process's runner, created on first use (never at import)."""
    global _runner
    if _runner is None:
        settings = get_settings()
        events.configure(settings)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        _runner = JobRunner(settings, make_sessionmaker(make_engine(settings.resolved_database_url())), enqueue=enqueue)
    elif enqueue is not None:
        _runner.enqueue = enqueue
    return _runner
