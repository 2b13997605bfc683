"""Per-project limits checked before the work: concurrent jobs, a job's training budget, disk storage."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InvalidInput, PayloadTooLarge, TooManyRequests
from app.models import Checkpoint, Dataset, Job, JobStatus
from app.schemas import JobCreate

# Training one image costs about three forward passes (forward, then backward through activations and weights).
TRAIN_PASSES = 3


@lru_cache(maxsize=256)
def forward_tflops(arch: str, image_size: int) -> float | None:
    """Forward TFLOPs of arch for one image at image_size, counted on the meta device (no memory, no weights)."""
    import torch

    from app.ml.backbones import build_model
    from app.ml.flops import forward_flops

    try:
        with torch.device("meta"):
            model = build_model(arch, 2, "none").model
        flops = forward_flops(model, image_size, torch.device("meta"))
    except Exception:  # an architecture the meta device or the counter cannot handle: the caps below still hold
        return None
    return None if flops is None else flops / 1e12


def check_active_jobs(session: Session, settings: Settings, project: str) -> None:
    """429 when the project already has max_active_jobs queued or running jobs."""
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.project == project, Job.status.in_((JobStatus.queued, JobStatus.running)))
    )
    if (active or 0) >= settings.max_active_jobs:
        raise TooManyRequests(
            f"the project has {active} queued or running jobs; the limit (VISIONTUNE_MAX_ACTIVE_JOBS) is "
            f"{settings.max_active_jobs}: wait for one to finish or cancel one",
            retry_after=60,
        )


def training_budget(req: JobCreate, train_images: int) -> float | None:
    """The job's estimated training cost in TFLOPs (None when the model's FLOPs cannot be counted)."""
    per_image = forward_tflops(req.arch, req.image_size)
    if per_image is None:
        return None
    return req.epochs * max(train_images, 1) * per_image * TRAIN_PASSES


def check_training_budget(settings: Settings, req: JobCreate, train_images: int) -> None:
    """422 naming the limit when a job asks for more epochs, batch pixels or compute than allowed."""
    if req.epochs > settings.max_job_epochs:
        raise InvalidInput(
            f"epochs={req.epochs} is over the limit of {settings.max_job_epochs} (VISIONTUNE_MAX_JOB_EPOCHS)"
        )
    batch_pixels = req.batch_size * req.image_size**2
    if batch_pixels > settings.max_batch_pixels:
        raise InvalidInput(
            f"batch_size × image_size² = {batch_pixels:,} pixels per batch is over the limit of "
            f"{settings.max_batch_pixels:,} (VISIONTUNE_MAX_BATCH_PIXELS): use a smaller batch or image size"
        )
    cost = training_budget(req, train_images)
    if cost is not None and cost > settings.max_job_tera_flops:
        raise InvalidInput(
            f"the job would cost about {cost:,.0f} TFLOPs (epochs × {train_images} training images × "
            f"{req.arch} at {req.image_size} px); the training budget (VISIONTUNE_MAX_JOB_TERA_FLOPS) is "
            f"{settings.max_job_tera_flops:,.0f}"
        )


def storage_used(session: Session, project: str) -> int:
    """Bytes the project keeps on disk: its uploaded datasets and its jobs' checkpoint files."""
    datasets = session.scalar(select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.project == project))
    checkpoints = session.scalar(
        select(func.coalesce(func.sum(Checkpoint.size_bytes), 0))
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Job.project == project, Checkpoint.pruned.is_(False))
    )
    return int(datasets or 0) + int(checkpoints or 0)


def storage_left(session: Session, settings: Settings, project: str) -> int:
    """Bytes the project may still add; 413 naming the quota when nothing is left."""
    left = settings.storage_quota_bytes - storage_used(session, project)
    if left <= 0:
        raise PayloadTooLarge(
            f"the project's storage quota of {settings.storage_quota_bytes:,} bytes (VISIONTUNE_STORAGE_QUOTA_BYTES) "
            "is used up: delete datasets or jobs first"
        )
    return left
