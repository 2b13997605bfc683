"""Claim a job, train it with app.ml, and persist epochs, checkpoints and the outcome, fenced by attempt.

The database owns job state. A worker claims a queued job with one conditional UPDATE that bumps `attempt`
(its fencing token), renews a lease while it trains, and makes every write conditional on still owning that
attempt; a write that matches no row raises LeaseLost and the worker stops without writing anything else.
Each epoch leaves a serving checkpoint and a resumable training state on disk (atomic, sha256 in SQL), so a
re-claimed job continues after its last good epoch.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings
from app.db import after_commit, make_engine, make_sessionmaker, session_scope
from app.ml.backbones import BuiltModel
from app.ml.checkpoint import CheckpointError, load_training_state, save_checkpoint, save_training_state
from app.ml.engine import DeviceSetup, TrainingStopped
from app.ml.strategies import export_state_dict
from app.ml.trainer import EpochReport, FitResult, TrainConfig, TrainingState, fit
from app.models import Checkpoint, Dataset, Epoch, Job, JobStatus
from app.services.exports import queue_exports
from app.services.registry import register_version
from worker import shutdown
from worker.lease import LeaseKeeper, LeaseLost, with_db_retry
from worker.reaper import retry_delay

log = logging.getLogger("visiontune.runner")

T = TypeVar("T")

# Errors a later attempt can get past (the database or broker was unreachable); anything else fails at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    ConnectionError,
    TimeoutError,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class RunnerHooks:
    """What fit() reports each epoch goes to SQL and disk, under this attempt's fence."""

    runner: JobRunner
    job: Job
    attempt: int
    config: TrainConfig
    class_names: list[str]
    keeper: LeaseKeeper
    resume: TrainingState | None = None
    baseline: dict[str, Any] | None = None
    built: BuiltModel | None = field(default=None, repr=False)

    def should_stop(self) -> bool:
        return self.keeper.should_stop()

    def on_epoch(self, report: EpochReport, built: BuiltModel, state: Callable[[], TrainingState]) -> None:
        self.built = built
        self.runner.record_epoch(self, report, built, state())

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

    # ------------------------------------------------------------ lease and fencing

    def claim(self, job_id: uuid.UUID) -> int | None:
        """Take a queued job with one compare-and-set UPDATE; the new attempt number, or None if not ours.

        Only `queued` jobs are claimed: a job whose worker died is put back in the queue by the reaper, which
        counts the lost attempt (so a job that keeps killing its worker ends failed) and applies the backoff.
        """
        now = utcnow()
        with session_scope(self.factory) as s:
            claimed = s.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.cancel_requested.is_(False),
                    Job.status == JobStatus.queued,
                    (Job.retry_after.is_(None)) | (Job.retry_after <= now),
                )
                .values(
                    status=JobStatus.running,
                    attempt=Job.attempt + 1,
                    lease_owner=self.worker_id,
                    lease_expires_at=now + timedelta(seconds=self.settings.lease_seconds),
                    heartbeat_at=now,
                    started_at=now,
                    retry_after=None,
                )
            ).rowcount
            if not claimed:
                return None
            return s.scalar(select(Job.attempt).where(Job.id == job_id))

    def _fence(self, s: Session, job_id: uuid.UUID, attempt: int, **values: Any) -> None:
        """Renew the lease (and set values) only while this attempt owns the job; else LeaseLost."""
        now = utcnow()
        values.setdefault("lease_expires_at", now + timedelta(seconds=self.settings.lease_seconds))
        values.setdefault("heartbeat_at", now)
        owned = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running)
            .values(**values)
        ).rowcount
        if not owned:
            raise LeaseLost(f"job {job_id} attempt {attempt} no longer owns the job")

    def renew_lease(self, job_id: uuid.UUID, attempt: int) -> bool:
        try:
            with session_scope(self.factory) as s:
                self._fence(s, job_id, attempt)
            return True
        except LeaseLost:
            return False

    def cancel_requested(self, job_id: uuid.UUID) -> bool:
        with session_scope(self.factory) as s:
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def with_db_retry(self, action: Callable[[], T]) -> T:
        """Run a unit of work, retrying while the database is unreachable, for at most lease_seconds."""
        return with_db_retry(action, self.settings.lease_seconds)

    # ------------------------------------------------------------ the run

    def run(self, job_id: uuid.UUID) -> str:
        """Train job_id if it can be claimed; returns the outcome in one word."""
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
            with session_scope(self.factory) as s:
                job = s.get(Job, job_id)
                assert job is not None
                dataset = s.get(Dataset, job.dataset_id)
                assert dataset is not None
                dataset_path = Path(dataset.path)
            config = TrainConfig.from_dict(job.config)
            resume = self.with_db_retry(lambda: self.load_resume_state(job_id, attempt))
            from app.ml.data import load_splits

            class_names, splits = load_splits(dataset_path)
            hooks = RunnerHooks(self, job, attempt, config, class_names, keeper, resume, job.baseline_metrics)
            result = fit(config, class_names, splits, hooks, DeviceSetup.for_device())
            self.with_db_retry(lambda: self.finish_success(job, attempt, result, hooks))
            return "succeeded"
        except (TrainingStopped, LeaseLost):
            if keeper.lost.is_set() or not (keeper.cancel.is_set() or shutdown.requested()):
                log.warning("job %s attempt %s lost its lease; stopping without writing", job_id, attempt)
                return "lease-lost"
            if keeper.cancel.is_set():
                self.finish(job_id, attempt, JobStatus.canceled, error="canceled by request")
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

    # ------------------------------------------------------------ resume

    def load_resume_state(self, job_id: uuid.UUID, attempt: int) -> TrainingState | None:
        """The newest training state whose file matches its sha256; epochs after it are forgotten (fenced).

        A corrupted or missing newest file falls back to the one before (two are kept). Epoch and checkpoint
        rows after the state that is used are deleted, so the history still has every epoch exactly once
        when the resumed attempt recomputes them.
        """
        with session_scope(self.factory) as s:
            rows = s.scalars(
                select(Checkpoint)
                .where(Checkpoint.job_id == job_id, Checkpoint.state_path.is_not(None))
                .order_by(Checkpoint.epoch.desc())
            ).all()
            last_recorded = s.scalar(select(Job.last_epoch).where(Job.id == job_id))
            candidates = [(c.epoch, c.state_path, c.state_sha256) for c in rows]
        state: TrainingState | None = None
        for epoch, path, digest in candidates:
            try:
                state = load_training_state(Path(str(path)), str(digest))
                break
            except CheckpointError as exc:
                log.error("job %s: cannot resume from epoch %s: %s", job_id, epoch, exc)
        resumed = int(state["epoch"]) if state is not None else 0
        if last_recorded is None and resumed == 0:
            return None
        with session_scope(self.factory) as s:
            self._fence(s, job_id, attempt)
            stale = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.epoch > resumed))
            for ckpt in stale:
                for p in (ckpt.path, ckpt.state_path):
                    if p:
                        Path(p).unlink(missing_ok=True)
            s.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.epoch > resumed))
            s.execute(delete(Epoch).where(Epoch.job_id == job_id, Epoch.epoch > resumed))
            s.execute(update(Checkpoint).where(Checkpoint.job_id == job_id).values(is_best=False))
            if state is not None:
                s.execute(
                    update(Checkpoint)
                    .where(Checkpoint.job_id == job_id, Checkpoint.epoch == int(state["best_epoch"]))
                    .values(is_best=True)
                )
            self._fence(
                s,
                job_id,
                attempt,
                last_epoch=resumed or None,
                last_step=state["step"] if state is not None else None,
            )
        if state is None:
            log.warning("job %s: no usable training state; starting again from epoch 1", job_id)
        else:
            log.info("job %s attempt %s resumes after epoch %s", job_id, attempt, resumed)
        return state

    # ------------------------------------------------------------ per-epoch records

    def record_epoch(self, hooks: RunnerHooks, report: EpochReport, built: BuiltModel, state: TrainingState) -> None:
        """Checkpoint files (atomic) and epoch + checkpoint rows (fenced), then prune superseded files."""
        job, attempt = hooks.job, hooks.attempt
        folder = (self.settings.checkpoints_dir / str(job.id)).resolve()
        path = folder / f"a{attempt}-e{report.epoch:04d}.safetensors"
        state_path = folder / f"a{attempt}-e{report.epoch:04d}.state.pt"
        digest, size = save_checkpoint(
            path, export_state_dict(built), self._metadata(hooks, built, report.epoch, report.val_accuracy)
        )
        state_digest, _ = save_training_state(state_path, state)
        stale: list[str] = []

        def write(s: Session) -> None:
            self._fence(s, job.id, attempt, last_epoch=report.epoch, last_step=state["step"])
            if s.scalar(select(Epoch.id).where(Epoch.job_id == job.id, Epoch.epoch == report.epoch)) is not None:
                return  # an earlier try of this very write committed before the connection dropped
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
                    images_per_second=report.train.images / max(report.seconds, 1e-9),
                    tflops=report.tflops,
                    mfu=report.mfu,
                )
            )
            if report.is_best:
                s.execute(update(Checkpoint).where(Checkpoint.job_id == job.id).values(is_best=False))
            s.add(
                Checkpoint(
                    job_id=job.id,
                    epoch=report.epoch,
                    path=str(path),
                    sha256=digest,
                    size_bytes=size,
                    val_accuracy=report.val_accuracy,
                    is_best=report.is_best,
                    state_path=str(state_path),
                    state_sha256=state_digest,
                )
            )
            s.flush()
            # Serving files: keep the best and the last two. Training states: keep the last two (a corrupted
            # newest one falls back to the one before).
            for ckpt in s.scalars(
                select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.epoch < report.epoch - 1)
            ):
                if not ckpt.is_best and not ckpt.pruned:
                    ckpt.pruned = True
                    stale.append(ckpt.path)
                if ckpt.state_path:
                    stale.append(ckpt.state_path)
                    ckpt.state_path, ckpt.state_sha256 = None, None

        def unit() -> None:
            stale.clear()
            with session_scope(self.factory) as s:
                write(s)

        self.with_db_retry(unit)
        for p in stale:
            Path(p).unlink(missing_ok=True)

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
            self._fence(s, job_id, attempt, baseline_metrics=baseline)

    # ------------------------------------------------------------ outcomes

    def finish_success(self, job: Job, attempt: int, result: FitResult, hooks: RunnerHooks) -> None:
        with session_scope(self.factory) as s:
            self._fence(
                s,
                job.id,
                attempt,
                status=JobStatus.succeeded,
                finished_at=utcnow(),
                error=None,  # a lost earlier attempt's message; `failures` keeps the count
                best_epoch=result.best_epoch,
                val_metrics=result.val_metrics,
                test_metrics=result.test_metrics,
                baseline_metrics=result.baseline or None,
                flops_per_image=result.flops_per_image,
                lease_owner=None,
                lease_expires_at=None,
            )
            best = s.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.is_best.is_(True)))
            assert best is not None
            if best.pruned or not Path(best.path).is_file():
                # A resume fell back past the epoch that superseded this best, whose file was pruned then:
                # the model holds the best weights now, so write them again.
                assert hooks.built is not None
                path = Path(best.path).with_name(f"a{attempt}-e{best.epoch:04d}-best.safetensors")
                meta = self._metadata(hooks, hooks.built, best.epoch, best.val_accuracy)
                best.sha256, best.size_bytes = save_checkpoint(path, export_state_dict(hooks.built), meta)
                best.path, best.pruned = str(path), False
            fresh = s.get(Job, job.id)
            assert fresh is not None
            test_acc = result.test_metrics["accuracy"] if result.test_metrics else None
            version = register_version(s, fresh, best, test_acc)
            send = self.enqueue_export
            export_ids = queue_exports(s, version, list(fresh.config.get("exports") or []), sent=send is not None)
            if send is not None:
                after_commit(s, lambda: [send(export_id) for export_id in export_ids])

    def finish(self, job_id: uuid.UUID, attempt: int, status: JobStatus, error: str) -> None:
        def unit() -> None:
            with session_scope(self.factory) as s:
                self._fence(
                    s,
                    job_id,
                    attempt,
                    status=status,
                    finished_at=utcnow(),
                    error=error[:4000],
                    lease_owner=None,
                    lease_expires_at=None,
                )

        try:
            self.with_db_retry(unit)
        except LeaseLost:
            log.warning("job %s attempt %s: not recording %s, another attempt owns the job", job_id, attempt, status)

    def release(self, job_id: uuid.UUID, attempt: int) -> str:
        """Graceful shutdown: the last epoch's checkpoint stands; hand the job back to the queue (or cancel it)."""
        now = utcnow()

        def unit() -> str:
            with session_scope(self.factory) as s:
                canceled = s.scalar(select(Job.cancel_requested).where(Job.id == job_id))
                if canceled:
                    self._fence(
                        s,
                        job_id,
                        attempt,
                        status=JobStatus.canceled,
                        finished_at=now,
                        error="canceled by request",
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                    return "canceled"
                self._fence(
                    s,
                    job_id,
                    attempt,
                    status=JobStatus.queued,
                    lease_owner=None,
                    lease_expires_at=None,
                    enqueued_at=now if self.enqueue else None,
                )
                return "requeued"

        try:
            outcome = self.with_db_retry(unit)
        except LeaseLost:
            return "lease-lost"
        if outcome == "requeued" and self.enqueue is not None:
            self.enqueue(job_id)
        log.info("job %s attempt %s released on shutdown: %s", job_id, attempt, outcome)
        return outcome

    def retry_later(self, job_id: uuid.UUID, attempt: int, error: str) -> str:
        """A transient error: count the failure; back to the queue after the backoff, or failed when spent."""

        def unit() -> str:
            with session_scope(self.factory) as s:
                job = s.get(Job, job_id)
                assert job is not None
                failures = job.failures + 1
                if job.cancel_requested or failures >= job.max_attempts:
                    status = JobStatus.canceled if job.cancel_requested else JobStatus.failed
                    reason = (
                        "canceled by request"
                        if job.cancel_requested
                        else (f"gave up after {failures} failed attempts; last error: {error}")
                    )
                    self._fence(
                        s,
                        job_id,
                        attempt,
                        status=status,
                        failures=failures,
                        finished_at=utcnow(),
                        error=reason[:4000],
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                    return str(status)
                self._fence(
                    s,
                    job_id,
                    attempt,
                    status=JobStatus.queued,
                    failures=failures,
                    error=f"attempt {attempt} failed, will retry: {error}"[:4000],
                    retry_after=utcnow() + timedelta(seconds=retry_delay(self.settings, failures)),
                    enqueued_at=None,  # the reaper sends it once retry_after has passed
                    lease_owner=None,
                    lease_expires_at=None,
                )
                return "retrying"

        try:
            return self.with_db_retry(unit)
        except (LeaseLost, *TRANSIENT_ERRORS):
            # Still unreachable: the lease runs out and the reaper counts the attempt instead.
            log.warning("job %s attempt %s: could not record the retry; the reaper will", job_id, attempt)
            return "lease-lost"


def release_device_memory() -> None:
    """Hand cached GPU memory back between jobs (the worker process lives on)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_runner: JobRunner | None = None


def get_runner(enqueue: Callable[[uuid.UUID], None] | None = None) -> JobRunner:
    """This process's runner, created on first use (never at import)."""
    global _runner
    if _runner is None:
        settings = get_settings()
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        _runner = JobRunner(settings, make_sessionmaker(make_engine(settings.resolved_database_url())), enqueue=enqueue)
    elif enqueue is not None:
        _runner.enqueue = enqueue
    return _runner
