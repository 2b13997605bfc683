"""How long a job would train, before it is submitted: its size (images, epochs, the quota's TFLOPs) and this
server's measured training rate."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Actor
from app.config import Settings
from app.ml.data import held_out
from app.ml.strategies import STRATEGIES
from app.models import Epoch, Job
from app.schemas import JobCreate, JobEstimate
from app.services import quotas
from app.services.jobs import validate_job_request

# The most recent epochs an estimate rests on: recent enough to reflect the hardware and software of now.
HISTORY_EPOCHS = 50


def images_per_epoch(split_counts: dict[str, dict[str, int]], val_fraction: float) -> int:
    """Training images per epoch: the train split less what is held out for validation when there is no val."""
    counts = split_counts.get("train", {}).values()
    if "val" in split_counts or val_fraction <= 0:
        return sum(counts)
    return sum(n - held_out(n, val_fraction) for n in counts)


def _same_setup_rate(session: Session, project: str, req: JobCreate) -> tuple[float, int] | None:
    """(images/s, epochs) over the project's recent epochs of jobs with this arch, strategy and image size."""
    rows = session.execute(
        select(Epoch.images_per_second, Epoch.seconds, Job.config)
        .join(Job, Job.id == Epoch.job_id)
        .where(Job.project == project, Job.arch == req.arch, Job.strategy == req.strategy)
        .order_by(Epoch.created_at.desc())
        .limit(4 * HISTORY_EPOCHS)
    ).all()
    same = [(ips, s) for ips, s, config in rows if config.get("image_size") == req.image_size][:HISTORY_EPOCHS]
    seconds = sum(s for _, s in same)
    if not same or seconds <= 0:
        return None
    # Time-weighted: all the images of those epochs over all their seconds (validation included).
    return sum(ips * s for ips, s in same) / seconds, len(same)


def _server_tflops(session: Session) -> tuple[float, int] | None:
    """(achieved TFLOP/s, epochs) over the recent epochs trained on this server (every project, any model)."""
    rows = session.execute(
        select(Epoch.tflops, Epoch.seconds)
        .where(Epoch.tflops.is_not(None), Epoch.seconds > 0)
        .order_by(Epoch.created_at.desc())
        .limit(HISTORY_EPOCHS)
    ).all()
    measured = [(t, s) for t, s in rows if t is not None]
    seconds = sum(s for _, s in measured)
    if not measured or seconds <= 0:
        return None
    return sum(t * s for t, s in measured) / seconds, len(measured)


def estimate_job(session: Session, settings: Settings, actor: Actor, req: JobCreate) -> JobEstimate:
    """The job's size and expected training time; the validation (422) POST /jobs would answer for the body."""
    dataset = validate_job_request(session, settings, actor, req)
    images = images_per_epoch(dataset.split_counts, req.val_fraction)
    tflops = quotas.training_budget(req, images)
    total_images = images * req.epochs
    estimate = JobEstimate(images_per_epoch=images, epochs=req.epochs, tflops=tflops, seconds=None, basis="")

    same = _same_setup_rate(session, actor.project, req)
    if same is not None:
        rate, n = same
        estimate.seconds = total_images / rate
        estimate.images_per_second, estimate.history_epochs = rate, n
        estimate.basis = (
            f"{rate:,.1f} training images/s, measured over the project's last {n} epoch(s) of {req.arch} "
            f"({req.strategy}) at {req.image_size} px on this server, validation passes included"
        )
        return estimate

    per_image = quotas.forward_tflops(req.arch, req.image_size)
    server = _server_tflops(session)
    if server is not None and per_image is not None:
        rate, n = server
        work = per_image * STRATEGIES.get(req.strategy).flops_factor  # TFLOPs per training image, as epochs count
        estimate.seconds = total_images * work / rate
        estimate.images_per_second, estimate.history_epochs = rate / work, n
        estimate.basis = (
            f"{rate:,.3f} TFLOP/s achieved over the last {n} epoch(s) trained on this server (any model), applied "
            f"to {work * 1e3:,.3f} GFLOPs per training image of {req.arch} at {req.image_size} px; no {req.strategy} "
            "job of this architecture and image size has run in this project yet"
        )
        return estimate

    estimate.basis = (
        "no estimate: this server has not measured a training epoch yet"
        if server is None
        else f"no estimate: the FLOPs of {req.arch} cannot be counted and no such job has run in this project yet"
    )
    return estimate
