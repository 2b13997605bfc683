"""Job use-cases: submit (validate, store, enqueue after commit), list, fetch, cancel."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import after_commit
from app.errors import Conflict, InvalidInput, NotFound
from app.ml.backbones import build_model, count_stages, known_architecture
from app.models import TERMINAL_STATUSES, Checkpoint, Dataset, Job, JobStatus, ModelVersion
from app.schemas import JobCreate

Enqueue = Callable[[uuid.UUID], None]


def validate_job_request(session: Session, req: JobCreate) -> Dataset:
    """422 for anything that cannot run: missing dataset, unknown architecture or weights, bad stage count."""
    dataset = session.get(Dataset, req.dataset_id)
    if dataset is None:
        raise InvalidInput(f"dataset {req.dataset_id} does not exist; upload one with POST /datasets")
    if not known_architecture(req.arch):
        raise InvalidInput(
            f"unknown architecture {req.arch!r}: use resnet18, resnet34, resnet50, mobilenet_v3_large, "
            "efficientnet_b0, convnext_tiny, vit_b_16, efficientnet_lite0 or timm/<model name>"
        )
    if req.weights not in ("imagenet", "none"):
        if not Path(req.weights).is_file():
            raise InvalidInput(
                f"weights must be 'imagenet', 'none' or a weights file on the server; {req.weights!r} is none"
            )
    if req.strategy == "lora" and req.weights == "none":
        raise InvalidInput("lora adapts pretrained weights; with weights 'none' use strategy 'full'")
    if req.strategy == "lora":
        from app.ml.strategies import lora_targets

        with torch.device("meta"):
            if not lora_targets(build_model(req.arch, 2, "none")):
                raise InvalidInput(f"LoRA finds no linear or dense convolution layers to adapt in {req.arch}")
    if req.strategy == "partial":
        stages = count_stages(req.arch)
        if req.unfreeze_stages > stages:
            raise InvalidInput(
                f"unfreeze_stages={req.unfreeze_stages} but {req.arch} has {stages} stages; "
                f"use 1..{stages} (or strategy 'full')"
            )
    train_counts = dataset.split_counts.get("train", {})
    if "val" not in dataset.split_counts and req.val_fraction > 0:
        if sum(1 for n in train_counts.values() if n >= 2) < 2:
            raise InvalidInput("too few training images per class to hold out a validation split")
    return dataset


MAX_IDEMPOTENCY_KEY_LENGTH = 200


def request_digest(req: JobCreate) -> str:
    """sha256 of the request with every default filled in: equal bodies, equal digests."""
    canonical = json.dumps(req.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_job(
    session: Session,
    req: JobCreate,
    enqueue: Enqueue,
    default_max_attempts: int = 3,
    idempotency_key: str | None = None,
) -> Job:
    """Store a queued job and enqueue its task once the row is committed."""
    validate_job_request(session, req)
    config = req.model_dump(mode="json")
    job = Job(
        dataset_id=req.dataset_id,
        model_name=req.model_name,
        arch=req.arch,
        weights=req.weights,
        strategy=req.strategy,
        config=config,
        status=JobStatus.queued,
        max_attempts=req.max_attempts or default_max_attempts,
        # Sent right after the commit; if that send is lost, the reaper re-sends it (see worker/reaper.py).
        enqueued_at=datetime.now(UTC),
        idempotency_key=idempotency_key,
        request_sha256=request_digest(req) if idempotency_key else None,
    )
    session.add(job)
    session.flush()
    job_id = job.id
    after_commit(session, lambda: enqueue(job_id))
    return job


def _replay(existing: Job, req: JobCreate, key: str) -> Job:
    if existing.request_sha256 != request_digest(req):
        raise Conflict(
            f"Idempotency-Key {key!r} was already used for job {existing.id} with a different request body; "
            "use a new key for a new job"
        )
    return existing


def submit_idempotent(
    session: Session, req: JobCreate, enqueue: Enqueue, key: str | None, default_max_attempts: int = 3
) -> tuple[Job, bool]:
    """submit_job, once per Idempotency-Key: (job, created). The same key and body returns the first job;
    the same key with another body is a 409."""
    if key is None:
        return submit_job(session, req, enqueue, default_max_attempts), True
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters")
    existing = session.scalar(select(Job).where(Job.idempotency_key == key))
    if existing is not None:
        return _replay(existing, req, key), False
    try:
        return submit_job(session, req, enqueue, default_max_attempts, key), True
    except IntegrityError:
        # A concurrent request with the same key inserted first: answer with its job.
        session.rollback()
        session.info.pop("after_commit", None)
        existing = session.scalar(select(Job).where(Job.idempotency_key == key))
        if existing is None:
            raise
        return _replay(existing, req, key), False


def get_job(session: Session, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def list_jobs(session: Session, status: str | None, limit: int, offset: int) -> tuple[list[Job], int]:
    query = select(Job)
    count = select(func.count()).select_from(Job)
    if status is not None:
        query = query.where(Job.status == status)
        count = count.where(Job.status == status)
    total = session.scalar(count) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc()).limit(limit).offset(offset)).all()
    return list(rows), total


def cancel_job(session: Session, job_id: uuid.UUID) -> Job:
    """Cancel a queued job (also one waiting to retry) at once; ask a running one to stop within a batch.

    A running job whose worker died is canceled by the reaper when its lease runs out, never retried.
    """
    job = get_job(session, job_id)
    now = datetime.now(UTC)
    # Conditional updates: the worker may claim or finish the job between our read and our write.
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.canceled, cancel_requested=True, finished_at=now, error="canceled by request")
    ).rowcount
    if not done:
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.running).values(cancel_requested=True)
        )
    session.refresh(job)
    if job.status in TERMINAL_STATUSES and not done and job.status != JobStatus.canceled:
        raise Conflict(f"job {job_id} already {job.status}; only queued or running jobs can be canceled")
    return job


def best_checkpoint(session: Session, job: Job) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.is_best.is_(True)))


def job_version(session: Session, job: Job) -> int | None:
    return session.scalar(select(ModelVersion.version).where(ModelVersion.job_id == job.id))


def confusion_png(session: Session, job_id: uuid.UUID, split: str) -> bytes:
    """The confusion matrix of the job's best checkpoint on split, as PNG; 409 until it exists."""
    from app.ml.plots import confusion_png as render

    job = get_job(session, job_id)
    metrics = job.test_metrics if split == "test" else job.val_metrics
    if not metrics:
        reason = "the dataset has no test split" if job.status == JobStatus.succeeded else f"the job is {job.status}"
        raise Conflict(f"no {split} confusion matrix for job {job_id}: {reason}")
    classes = list(metrics["per_class"])
    return render(metrics["confusion_matrix"], classes, f"{job.model_name} ({job.arch}), {split}")


def curves_png(session: Session, job_id: uuid.UUID) -> bytes:
    """Loss/accuracy curves per epoch as PNG; 409 before the first epoch."""
    from app.ml.plots import curves_png as render

    job = get_job(session, job_id)
    if not job.epochs:
        raise Conflict(f"job {job_id} has no finished epoch yet (status {job.status})")
    rows = [
        {
            "epoch": e.epoch,
            "train_loss": e.train_loss,
            "val_loss": e.val_loss,
            "train_accuracy": e.train_accuracy,
            "val_accuracy": e.val_accuracy,
        }
        for e in job.epochs
    ]
    return render(rows, f"{job.model_name} ({job.arch}, {job.strategy})")
