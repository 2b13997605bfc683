"""Claim a job, train it with app.ml, and persist epochs, checkpoints and the outcome, fenced by attempt."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings
from app.db import make_engine, make_sessionmaker, session_scope
from app.ml.backbones import BuiltModel
from app.ml.checkpoint import save_checkpoint
from app.ml.engine import DeviceSetup, TrainingStopped
from app.ml.strategies import export_state_dict
from app.ml.trainer import EpochReport, FitResult, TrainConfig, fit
from app.models import Checkpoint, Dataset, Epoch, Job, JobStatus
from app.services.registry import register_version

log = logging.getLogger("visiontune.runner")


class LeaseLost(RuntimeError):
    """Another attempt owns the job now; this worker must stop without writing."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class LeaseKeeper(threading.Thread):
    """Renews the job's lease and watches for cancellation while the job trains."""

    def __init__(self, runner: JobRunner, job_id: uuid.UUID, attempt: int) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.runner, self.job_id, self.attempt = runner, job_id, attempt
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._stop_event = threading.Event()
        self.poll = min(1.0, runner.settings.lease_seconds / 4)
        self.renew_every = runner.settings.lease_seconds / 3

    def run(self) -> None:
        last_renewed = utcnow()
        next_renew = 0.0
        elapsed = 0.0
        while not self._stop_event.wait(self.poll):
            elapsed += self.poll
            try:
                if elapsed >= next_renew:
                    if not self.runner.renew_lease(self.job_id, self.attempt):
                        self.lost.set()
                        return
                    last_renewed = utcnow()
                    next_renew = elapsed + self.renew_every
                if self.runner.cancel_requested(self.job_id):
                    self.cancel.set()
            except Exception:  # database unreachable: keep trying until our lease would have run out
                log.warning("lease renewal for job %s failed; retrying", self.job_id, exc_info=True)
                if utcnow() - last_renewed > timedelta(seconds=self.runner.settings.lease_seconds):
                    self.lost.set()
                    return

    def stop(self) -> None:
        self._stop_event.set()

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set()


@dataclass
class RunnerHooks:
    """What fit() reports each epoch goes to SQL and disk, under this attempt's fence."""

    runner: JobRunner
    job: Job
    attempt: int
    config: TrainConfig
    class_names: list[str]
    keeper: LeaseKeeper

    def should_stop(self) -> bool:
        return self.keeper.should_stop()

    def on_epoch(self, report: EpochReport, built: BuiltModel) -> None:
        self.runner.record_epoch(self, report, built)


class JobRunner:
    """Runs jobs for one worker process."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session], worker_id: str | None = None) -> None:
        self.settings = settings
        self.factory = factory
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"

    # ------------------------------------------------------------ lease and fencing

    def claim(self, job_id: uuid.UUID) -> int | None:
        """Take the job with one compare-and-set UPDATE; the new attempt number, or None if not ours."""
        now = utcnow()
        with session_scope(self.factory) as s:
            claimed = s.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.cancel_requested.is_(False),
                    or_(
                        Job.status == JobStatus.queued,
                        (Job.status == JobStatus.running) & (Job.lease_expires_at < now),
                    ),
                )
                .values(
                    status=JobStatus.running,
                    attempt=Job.attempt + 1,
                    lease_owner=self.worker_id,
                    lease_expires_at=now + timedelta(seconds=self.settings.lease_seconds),
                    heartbeat_at=now,
                    started_at=now,
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

    # ------------------------------------------------------------ the run

    def run(self, job_id: uuid.UUID) -> str:
        """Train job_id if it can be claimed; returns the outcome in one word."""
        attempt = self.claim(job_id)
        if attempt is None:
            log.info("job %s is not claimable (finished, canceled or owned by a live worker)", job_id)
            return "skipped"
        keeper = LeaseKeeper(self, job_id, attempt)
        keeper.start()
        try:
            with session_scope(self.factory) as s:
                job = s.get(Job, job_id)
                assert job is not None
                dataset = s.get(Dataset, job.dataset_id)
                assert dataset is not None
                dataset_path = Path(dataset.path)
            config = TrainConfig.from_dict(job.config)
            from app.ml.data import load_splits

            class_names, splits = load_splits(dataset_path)
            hooks = RunnerHooks(self, job, attempt, config, class_names, keeper)
            result = fit(config, class_names, splits, hooks, DeviceSetup.for_device())
            self.finish_success(job, attempt, result)
            return "succeeded"
        except (TrainingStopped, LeaseLost):
            if keeper.lost.is_set() or not keeper.cancel.is_set():
                log.warning("job %s attempt %s lost its lease; stopping without writing", job_id, attempt)
                return "lease-lost"
            self.finish(job_id, attempt, JobStatus.canceled, error="canceled by request")
            return "canceled"
        except Exception as exc:
            log.exception("job %s failed", job_id)
            self.finish(job_id, attempt, JobStatus.failed, error=f"{exc.__class__.__name__}: {exc}")
            return "failed"
        finally:
            keeper.stop()
            keeper.join(timeout=10)
            release_device_memory()

    def record_epoch(self, hooks: RunnerHooks, report: EpochReport, built: BuiltModel) -> None:
        """Checkpoint file (atomic) and epoch + checkpoint rows (fenced), then prune superseded files."""
        job, attempt, cfg = hooks.job, hooks.attempt, hooks.config
        path = self.settings.checkpoints_dir / str(job.id) / f"a{attempt}-e{report.epoch:04d}.safetensors"
        metadata = {
            "arch": cfg.arch,
            "class_names": hooks.class_names,
            "image_size": cfg.image_size,
            "preprocessing": built.preprocessing.as_dict(),
            "config": cfg.as_dict(),
            "job_id": str(job.id),
            "attempt": attempt,
            "epoch": report.epoch,
            "val_accuracy": report.val_accuracy,
        }
        digest, size = save_checkpoint(path.resolve(), export_state_dict(built), metadata)
        stale: list[str] = []
        with session_scope(self.factory) as s:
            self._fence(s, job.id, attempt)
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
                    path=str(path.resolve()),
                    sha256=digest,
                    size_bytes=size,
                    val_accuracy=report.val_accuracy,
                    is_best=report.is_best,
                )
            )
            s.flush()
            # Keep the best and the latest files; older ones are superseded.
            for ckpt in s.scalars(
                select(Checkpoint).where(
                    Checkpoint.job_id == job.id,
                    Checkpoint.is_best.is_(False),
                    Checkpoint.pruned.is_(False),
                    Checkpoint.epoch < report.epoch,
                )
            ):
                ckpt.pruned = True
                stale.append(ckpt.path)
        for p in stale:
            Path(p).unlink(missing_ok=True)

    def finish_success(self, job: Job, attempt: int, result: FitResult) -> None:
        with session_scope(self.factory) as s:
            self._fence(
                s,
                job.id,
                attempt,
                status=JobStatus.succeeded,
                finished_at=utcnow(),
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
            fresh = s.get(Job, job.id)
            assert fresh is not None
            test_acc = result.test_metrics["accuracy"] if result.test_metrics else None
            register_version(s, fresh, best, test_acc)

    def finish(self, job_id: uuid.UUID, attempt: int, status: JobStatus, error: str) -> None:
        try:
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
        except LeaseLost:
            log.warning("job %s attempt %s: not recording %s, another attempt owns the job", job_id, attempt, status)


def release_device_memory() -> None:
    """Hand cached GPU memory back between jobs (the worker process lives on)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_runner: JobRunner | None = None


def get_runner() -> JobRunner:
    """This process's runner, created on first use (never at import)."""
    global _runner
    if _runner is None:
        settings = get_settings()
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        _runner = JobRunner(settings, make_sessionmaker(make_engine(settings.resolved_database_url())))
    return _runner
