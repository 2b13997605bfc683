"""POST/GET/DELETE /jobs, cancel, live events, metrics and plots (the caller's project only)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse

from app.api.deps import ReadCaller, SessionDep, SettingsDep, TrainCaller
from app.api.docs import errors
from app.db import after_commit
from app.events import EVENT_ID
from app.models import Job
from app.schemas import (
    MAX_OFFSET,
    CheckpointOut,
    ConfusionCell,
    EpochOut,
    JobCreate,
    JobDetail,
    JobEstimate,
    JobMetrics,
    JobSummary,
    Page,
)
from app.services import estimates, job_events, predictions
from app.services import jobs as service

router = APIRouter(prefix="/jobs", tags=["jobs"])


def to_detail(session: SessionDep, job: Job) -> JobDetail:
    best = service.best_checkpoint(session, job)
    summary = JobSummary.model_validate(job)
    return JobDetail(
        **summary.model_dump(),
        config=job.config,
        cancel_requested=job.cancel_requested,
        epochs=[EpochOut.model_validate(e) for e in job.epochs],
        best_checkpoint=CheckpointOut.model_validate(best) if best else None,
        val_metrics=job.val_metrics,
        test_metrics=job.test_metrics,
        baseline_metrics=job.baseline_metrics,
        model_version=service.job_version(session, job),
    )


@router.post(
    "",
    status_code=202,
    response_model=JobDetail,
    summary="Start a fine-tuning job",
    responses={
        200: {"description": "replayed: this Idempotency-Key already created the job"},
        **errors(403, 409, 413, 422, 429),
    },
)
def create_job(
    body: JobCreate,
    caller: TrainCaller,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Retry-safe submission: the same key and body return the job the first request created "
            "(200); the same key with another body is a 409.",
        ),
    ] = None,
) -> JobDetail:
    """Validate and queue a job in the caller's project; a worker picks it up. Poll GET /jobs/{id}."""
    job, created = service.submit_idempotent(
        session, settings, caller, body, request.app.state.enqueue, idempotency_key
    )
    if not created:
        response.status_code = 200
    return to_detail(session, job)


@router.post("/estimate", response_model=JobEstimate, responses=errors(403, 422))
def estimate_job(body: JobCreate, caller: TrainCaller, session: SessionDep, settings: SettingsDep) -> JobEstimate:
    """How much a job would train (images per epoch, epochs, TFLOPs) and for how long, from this server's
    measured training rate; the body is POST /jobs's, validated the same way. Nothing is submitted."""
    return estimates.estimate_job(session, settings, caller, body)


@router.api_route("/estimate", methods=["GET", "DELETE"], include_in_schema=False)
def estimate_other_methods() -> None:
    """/jobs/estimate is POST only: without this, GET and DELETE would reach /jobs/{job_id} and answer that
    "estimate" is not a job id, instead of 405 with Allow."""
    raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})


@router.get("", response_model=Page[JobSummary], responses=errors())
def list_jobs(
    caller: ReadCaller,
    session: SessionDep,
    status: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[JobSummary]:
    rows, total = service.list_jobs(session, caller.project, status, limit, offset)
    return Page(items=[JobSummary.model_validate(j) for j in rows], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobDetail, responses=errors(404))
def get_job(job_id: uuid.UUID, caller: ReadCaller, session: SessionDep) -> JobDetail:
    return to_detail(session, service.get_job(session, caller.project, job_id))


@router.delete("/{job_id}", status_code=204, responses=errors(404, 409, 429))
def delete_job(
    job_id: uuid.UUID, caller: TrainCaller, session: SessionDep, settings: SettingsDep, request: Request
) -> Response:
    """Delete a finished job with its epochs, checkpoint files and model version (a pin on it is lifted)."""
    service.delete_job(session, settings, caller, job_id)
    after_commit(session, request.app.state.serving_targets.forget)
    return Response(status_code=204)


@router.post("/{job_id}/cancel", response_model=JobDetail, responses=errors(404, 409, 429))
def cancel_job(job_id: uuid.UUID, caller: TrainCaller, session: SessionDep) -> JobDetail:
    """Cancel a queued job now, or stop a running one within a batch."""
    return to_detail(session, service.cancel_job(session, caller, job_id))


SSE = {
    "content": {"text/event-stream": {}},
    "description": "Server-Sent Events, each with an id (give the last one as Last-Event-ID to resume): `status` "
    "(status, error, attempt), `progress` (epoch, epochs, step, steps, loss, images_per_second, eta_seconds; about "
    "once a second while training) and `epoch` (the epoch's metrics). The stream closes after a terminal status.",
}


# Not response_class=EventSourceResponse: FastAPI would take the route for a generator of events; this one checks
# the job and Redis first (404 and 503 as JSON), then returns the stream.
@router.get("/{job_id}/events", response_class=StreamingResponse, responses={200: SSE, **errors(404, 503)})
async def job_events_stream(
    job_id: uuid.UUID,
    caller: ReadCaller,
    session: SessionDep,
    request: Request,
    last_event_id: Annotated[
        str | None,
        Header(pattern=f"^{EVENT_ID.pattern}$", description="Resume after this event id (what the last event had)"),
    ] = None,
) -> EventSourceResponse:
    """The job's events from the start (or after Last-Event-ID), then live ones until it finishes."""
    snapshot = await run_in_threadpool(job_events.job_snapshot, session, caller.project, job_id)
    body = await job_events.open_events(request.app.state.events_reader, snapshot, last_event_id)
    return EventSourceResponse(body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/metrics", response_model=JobMetrics, responses=errors(404))
def job_metrics(job_id: uuid.UUID, caller: ReadCaller, session: SessionDep) -> JobMetrics:
    """The full history: every epoch, the best epoch on val and test, and the model before fine-tuning."""
    job = service.get_job(session, caller.project, job_id)
    return JobMetrics(
        job_id=job.id,
        status=job.status,
        best_epoch=job.best_epoch,
        epochs=[EpochOut.model_validate(e) for e in job.epochs],
        val=job.val_metrics,
        test=job.test_metrics,
        before_finetuning=job.baseline_metrics,
        flops_per_image=job.flops_per_image,
    )


PNG = {"content": {"image/png": {}}, "description": "PNG image"}


@router.get("/{job_id}/confusion.png", response_class=Response, responses={200: PNG, **errors(404, 409)})
def confusion_png(
    job_id: uuid.UUID, caller: ReadCaller, session: SessionDep, split: Literal["test", "val"] = "test"
) -> Response:
    """The best checkpoint's confusion matrix on the test split (or val)."""
    return Response(service.confusion_png(session, caller.project, job_id, split), media_type="image/png")


@router.get("/{job_id}/curves.png", response_class=Response, responses={200: PNG, **errors(404, 409)})
def curves_png(job_id: uuid.UUID, caller: ReadCaller, session: SessionDep) -> Response:
    """Train and validation loss and accuracy per epoch."""
    return Response(service.curves_png(session, caller.project, job_id), media_type="image/png")


@router.get("/{job_id}/confusion", response_model=ConfusionCell, responses=errors(404, 409, 422))
def confusion_cell(
    job_id: uuid.UUID,
    caller: ReadCaller,
    session: SessionDep,
    true: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="true class index")],
    predicted: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="predicted class index")],
    limit: Annotated[int, Query(ge=1, le=200)] = 24,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ConfusionCell:
    """The validation images of one cell of the best checkpoint's confusion matrix (val split), most confident
    first; 409 predictions_unavailable until the job has succeeded."""
    return predictions.confusion_cell(session, caller.project, job_id, true, predicted, limit, offset)
