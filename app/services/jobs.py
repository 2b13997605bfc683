"""Job use-cases: submit (validate, store, enqueue after commit), list, fetch, cancel."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import job_state
from app.auth import Actor
from app.config import Settings
from app.db import after_commit
from app.errors import Conflict, Forbidden, InvalidInput, NotFound
from app.ml.architectures import ARCHITECTURES, ArchitectureError
from app.ml.metrics import class_order
from app.ml.strategies import STRATEGIES, StrategyError
from app.models import TERMINAL_STATUSES, Checkpoint, Dataset, Job, JobStatus, ModelVersion
from app.schemas import JobCreate
from app.services import audit, quotas, registry

Enqueue = Callable[[uuid.UUID], None]


def resolve_weights(settings: Settings, actor: Actor, weights: str) -> str:
    """'imagenet', 'none', or the absolute path of a weights file under VISIONTUNE_WEIGHTS_ROOT (admins only).

    A path outside the root is refused with the same answer whether or not such a file exists.
    """
    if weights in ("imagenet", "none"):
        return weights
    if not actor.is_admin:
        raise Forbidden("server-side weights files need an admin key; use weights 'imagenet' or 'none'")
    outside = InvalidInput(
        "weights must be 'imagenet', 'none' or a .safetensors/.pt/.pth file under the server's weights root "
        "(VISIONTUNE_WEIGHTS_ROOT), named relative to it"
    )
    if settings.weights_root is None or "\x00" in weights:
        raise outside
    root = settings.weights_root.resolve()
    try:
        candidate = Path(weights)
        target = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (OSError, RuntimeError, ValueError):
        raise outside from None
    if not target.is_relative_to(root) or target.suffix.lower() not in WEIGHTS_SUFFIXES:
        raise outside
    if not target.is_file():
        raise InvalidInput(f"there is no weights file {str(target.relative_to(root))!r} under the weights root")
    return str(target)


WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth")


def validate_job_request(session: Session, settings: Settings, actor: Actor, req: JobCreate) -> Dataset:
    """422 for anything that cannot run: missing dataset, unknown architecture or weights, bad stage count,
    a job over the training budget."""
    dataset = session.get(Dataset, req.dataset_id)
    if dataset is None or dataset.project != actor.project:
        raise InvalidInput(f"dataset {req.dataset_id} does not exist; upload one with POST /datasets")
    try:
        ARCHITECTURES.get(req.arch)
    except ArchitectureError as exc:
        raise InvalidInput(str(exc)) from None
    try:
        STRATEGIES.get(req.strategy).check(req)  # e.g. partial's stage count, lora's pretrained weights
    except StrategyError as exc:
        raise InvalidInput(str(exc)) from None
    train_counts = dataset.split_counts.get("train", {})
    if "val" not in dataset.split_counts and req.val_fraction > 0:
        if sum(1 for n in train_counts.values() if n >= 2) < 2:
            raise InvalidInput("too few training images per class to hold out a validation split")
    quotas.check_training_budget(settings, req, sum(train_counts.values()))
    return dataset


MAX_IDEMPOTENCY_KEY_LENGTH = 200


def request_digest(req: JobCreate) -> str:
    """sha256 of the request with every default filled in: equal bodies, equal digests."""
    canonical = json.dumps(req.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_job(
    session: Session,
    settings: Settings,
    actor: Actor,
    req: JobCreate,
    enqueue: Enqueue,
    idempotency_key: str | None = None,
) -> Job:
    """Store a queued job in the caller's project and enqueue its task once the row is committed."""
    validate_job_request(session, settings, actor, req)
    weights = resolve_weights(settings, actor, req.weights)
    quotas.check_active_jobs(session, settings, actor.project)
    quotas.storage_left(session, settings, actor.project)
    config = req.model_dump(mode="json")
    config["weights"] = weights
    job = Job(
        project=actor.project,
        dataset_id=req.dataset_id,
        model_name=req.model_name,
        arch=req.arch,
        weights=weights,
        strategy=req.strategy,
        config=config,
        max_attempts=req.max_attempts or settings.max_attempts,
        idempotency_key=idempotency_key,
        request_sha256=request_digest(req) if idempotency_key else None,
    )
    # Sent right after the commit; if that send is lost, the reaper re-sends it (see worker/reaper.py).
    job_state.submit(session, job, sent=True)
    job_id = job.id
    audit.record(session, actor, "job.submit", "job", job_id, {"model_name": req.model_name, "arch": req.arch})
    after_commit(session, lambda: enqueue(job_id))
    return job


def _replay(existing: Job, req: JobCreate, key: str) -> Job:
    if existing.request_sha256 != request_digest(req):
        raise Conflict(
            f"Idempotency-Key {key[:100]!r} was already used for job {existing.id} with a different request body; "
            "use a new key for a new job"
        )
    return existing


def _by_idempotency_key(session: Session, project: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.project == project, Job.idempotency_key == key))


def submit_idempotent(
    session: Session, settings: Settings, actor: Actor, req: JobCreate, enqueue: Enqueue, key: str | None
) -> tuple[Job, bool]:
    """submit_job, once per Idempotency-Key in a project: (job, created). The same key and body returns the
    first job; the same key with another body is a 409."""
    if key is None:
        return submit_job(session, settings, actor, req, enqueue), True
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters")
    existing = _by_idempotency_key(session, actor.project, key)
    if existing is not None:
        return _replay(existing, req, key), False
    try:
        return submit_job(session, settings, actor, req, enqueue, key), True
    except IntegrityError:
        # A concurrent request with the same key inserted first: answer with its job.
        session.rollback()
        session.info.pop("after_commit", None)
        existing = _by_idempotency_key(session, actor.project, key)
        if existing is None:
            raise
        return _replay(existing, req, key), False


def get_job(session: Session, project: str, job_id: uuid.UUID) -> Job:
    """The project's job; another project's job is as absent as a missing one."""
    job = session.get(Job, job_id)
    if job is None or job.project != project:
        raise NotFound(f"job {job_id} does not exist")
    return job


def list_jobs(session: Session, project: str, status: str | None, limit: int, offset: int) -> tuple[list[Job], int]:
    query = select(Job).where(Job.project == project)
    count = select(func.count()).select_from(Job).where(Job.project == project)
    if status is not None:
        query = query.where(Job.status == status)
        count = count.where(Job.status == status)
    total = session.scalar(count) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    return list(rows), total


def cancel_job(session: Session, actor: Actor, job_id: uuid.UUID) -> Job:
    """Cancel a queued job (also one waiting to retry) at once; ask a running one to stop within a batch.

    A running job whose worker died is canceled by the reaper when its lease runs out, never retried.
    """
    job = get_job(session, actor.project, job_id)
    refused = not job_state.cancel(session, job_id)
    session.refresh(job)
    if refused:
        raise Conflict(f"job {job_id} already {job.status}; only queued or running jobs can be canceled")
    audit.record(session, actor, "job.cancel", "job", job_id, {"status": job.status})
    return job


def delete_job(session: Session, settings: Settings, actor: Actor, job_id: uuid.UUID) -> None:
    """Remove a finished job: its epochs, checkpoints (files too) and model version; 409 while it may run."""
    job = get_job(session, actor.project, job_id)
    if job.status not in TERMINAL_STATUSES:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first and delete it once it has stopped")
    # Conditional: the job must still be finished when the rows go (a retry cannot sneak in between).
    version = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))
    if version is not None:
        registry.forget_version(session, actor, version)
    folder = settings.checkpoints_dir / str(job_id)
    files = [Path(p) for c in job.checkpoints for p in (c.path, c.state_path) if p]
    session.delete(job)
    session.flush()
    audit.record(session, actor, "job.delete", "job", job_id, {"model_name": job.model_name})
    after_commit(session, lambda: _remove_files(folder, files))


def _remove_files(folder: Path, files: list[Path]) -> None:
    for f in files:
        f.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def best_checkpoint(session: Session, job: Job) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.is_best.is_(True)))


def job_version(session: Session, job: Job) -> int | None:
    return session.scalar(select(ModelVersion.version).where(ModelVersion.job_id == job.id))


def confusion_png(session: Session, project: str, job_id: uuid.UUID, split: str) -> bytes:
    """The confusion matrix of the job's best checkpoint on split, as PNG; 409 until it exists."""
    from app.ml.plots import confusion_png as render

    job = get_job(session, project, job_id)
    metrics = job.test_metrics if split == "test" else job.val_metrics
    if not metrics:
        reason = "the dataset has no test split" if job.status == JobStatus.succeeded else f"the job is {job.status}"
        raise Conflict(f"no {split} confusion matrix for job {job_id}: {reason}")
    return render(metrics["confusion_matrix"], class_order(metrics), f"{job.model_name} ({job.arch}), {split}")


def curves_png(session: Session, project: str, job_id: uuid.UUID) -> bytes:
    """Loss/accuracy curves per epoch as PNG; 409 before the first epoch."""
    from app.ml.plots import curves_png as render

    job = get_job(session, project, job_id)
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
