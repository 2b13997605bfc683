"""Per-image validation predictions of a job's best checkpoint: stored when the job succeeds, read one
confusion-matrix cell at a time (the dashboard's click-through), removed with the job or its dataset."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.errors import InvalidInput, PredictionsUnavailable
from app.ml.metrics import class_order
from app.models import Job, JobStatus, ValPrediction
from app.schemas import ClassRef, ConfusionCell, ConfusionImage
from app.services.jobs import get_job

if TYPE_CHECKING:  # the API never needs the trainer's (torch) imports
    from app.ml.trainer import ValPredictions

INSERT_CHUNK = 5000


def record(session: Session, job_id: uuid.UUID, predictions: ValPredictions) -> None:
    """Store the job's predictions, replacing any an earlier try of the same write left (never duplicated)."""
    session.execute(delete(ValPrediction).where(ValPrediction.job_id == job_id))
    rows = [
        {"job_id": job_id, "ref": int(r), "true_class": int(t), "predicted_class": int(p), "confidence": float(c)}
        for r, t, p, c in zip(
            predictions.refs, predictions.true, predictions.predicted, predictions.confidence, strict=True
        )
    ]
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(ValPrediction), rows[start : start + INSERT_CHUNK])


def forget_dataset(session: Session, dataset_id: uuid.UUID) -> None:
    """Drop the predictions of every job trained on a dataset that is going away (their refs name its images)."""
    jobs = select(Job.id).where(Job.dataset_id == dataset_id).scalar_subquery()
    session.execute(delete(ValPrediction).where(ValPrediction.job_id.in_(jobs)))


def _class_names(job: Job) -> list[str] | None:
    metrics: dict[str, Any] | None = job.val_metrics
    return (class_order(metrics) or None) if metrics else None


def _unavailable(job: Job) -> PredictionsUnavailable:
    if job.status != JobStatus.succeeded:
        reason = f"the job is {job.status}; they are stored when it succeeds"
    elif job.val_metrics is None:
        reason = "the job had no validation split"
    elif job.dataset_id is None:
        reason = "its dataset was deleted"
    else:
        reason = "the job was trained before per-image predictions were stored"
    return PredictionsUnavailable(f"job {job.id} has no per-image validation predictions: {reason}")


def confusion_cell(
    session: Session, project: str, job_id: uuid.UUID, true: int, predicted: int, limit: int, offset: int
) -> ConfusionCell:
    """The validation images whose true class is `true` and predicted class `predicted`, most confident first;
    404 for another project's job, 422 for a class index out of range, 409 without stored predictions."""
    job = get_job(session, project, job_id)
    names = _class_names(job)
    if names is not None:
        for label, index in (("true", true), ("predicted", predicted)):
            if not 0 <= index < len(names):
                raise InvalidInput(f"{label}={index} is not a class index of this job: 0..{len(names) - 1}")
    stored = session.scalar(select(ValPrediction.ref).where(ValPrediction.job_id == job.id).limit(1))
    if names is None or stored is None or job.val_metrics is None:
        raise _unavailable(job)
    cell = (
        ValPrediction.job_id == job.id,
        ValPrediction.true_class == true,
        ValPrediction.predicted_class == predicted,
    )
    # The stored predictions and the stored confusion matrix come from the same validation pass.
    total = int(job.val_metrics["confusion_matrix"][true][predicted])
    rows = session.execute(
        select(ValPrediction.ref, ValPrediction.confidence)
        .where(*cell)
        .order_by(ValPrediction.confidence.desc(), ValPrediction.ref)
        .limit(limit)
        .offset(offset)
    ).all()
    return ConfusionCell(
        job_id=job.id,
        dataset_id=job.dataset_id,
        true=ClassRef(index=true, name=names[true]),
        predicted=ClassRef(index=predicted, name=names[predicted]),
        total=total,
        limit=limit,
        offset=offset,
        items=[ConfusionImage(ref=ref, confidence=confidence) for ref, confidence in rows],
    )
