"""Every transition of a training job's status, each one conditional UPDATE; nothing else writes `Job.status`.

    transition        from                         to                                         called by
    submit            (new)                        queued                                     API
    cancel            queued                       canceled, at once                          API
                      running                      running with cancel_requested              API
    claim             queued, retry due            running, attempt + 1                       worker
    fenced_write      running, this attempt        running (lease renewed, progress)          worker
    succeed           running, this attempt        succeeded                                  worker
    fail              running, this attempt        failed                                     worker
    confirm_cancel    running, this attempt        canceled                                   worker
    release           running, this attempt        queued (or canceled if asked)              worker, on shutdown
    retry_or_give_up  running, this attempt        queued after backoff | failed | canceled    worker, transient error
    expire_lease      running, lease ran out       as retry_or_give_up                        reaper

A worker claims a queued job with one compare-and-set UPDATE that bumps `attempt`: that number is its fencing
token. Every write the worker makes afterwards (lease renewals, progress, the outcome) matches `(id, attempt,
running)`, and raises LeaseLost when it matches no row, so a stale worker never overwrites a newer attempt.
A lost attempt, whether the worker saw a transient error or died and the reaper found its lease expired, goes
through one decision: `retry_or_give_up` (back to the queue after a backoff, failed once `max_attempts` failures
are spent, canceled if a cancel was asked for meanwhile).

The functions take the caller's session and never commit: the API's request and the worker's `session_scope`
own the unit of work. Each status change is published as a `status` event (app.events) once that unit commits.
No torch here, nothing of the workers: the reaper and the API load it too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, select, update
from sqlalchemy.orm import Session

from app import events
from app.config import Settings
from app.db import after_commit, updated_rows
from app.models import Job, JobStatus, utcnow

CANCELED_BY_REQUEST = "canceled by request"
MAX_ERROR = 4000  # characters of an error message kept on the job
MAX_BACKOFF_SECONDS = 600.0


class LeaseLost(RuntimeError):
    """Another attempt owns the row now (or it finished); this worker must stop without writing."""


def retry_delay(settings: Settings, failures: int) -> float:
    """Backoff before retry number `failures`: retry_backoff_seconds doubling, at most 10 minutes."""
    return min(MAX_BACKOFF_SECONDS, settings.retry_backoff_seconds * 2 ** max(0, failures - 1))


# ---------------------------------------------------------------- the API's transitions


def submit(session: Session, job: Job, *, sent: bool = True) -> Job:
    """A new job, queued. `sent`: the caller publishes its task right after the commit (else the reaper does)."""
    job.status = JobStatus.queued
    job.attempt, job.failures = 0, 0
    job.enqueued_at = utcnow() if sent else None
    session.add(job)
    session.flush()
    _announce(session, job.id, JobStatus.queued, attempt=0)
    return job


def cancel(session: Session, job_id: uuid.UUID) -> bool:
    """Cancel a queued job (also one waiting to retry) at once; ask a running one to stop (`cancel_requested`).

    False when the job already succeeded or failed: it is refused. Canceling a canceled job changes nothing.
    """
    # Conditional updates: a worker may claim or finish the job between our read and our write.
    canceled = updated_rows(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.canceled, cancel_requested=True, finished_at=utcnow(), error=CANCELED_BY_REQUEST),
    )
    if canceled:
        _announce(session, job_id, JobStatus.canceled, CANCELED_BY_REQUEST)
        return True
    updated_rows(
        session, update(Job).where(Job.id == job_id, Job.status == JobStatus.running).values(cancel_requested=True)
    )
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status not in (JobStatus.succeeded, JobStatus.failed)


# ---------------------------------------------------------------- a worker's transitions, fenced by attempt


def claim(
    session: Session, job_id: uuid.UUID, owner: str, lease_seconds: float, now: datetime | None = None
) -> int | None:
    """queued -> running with the attempt number bumped: the new attempt (the fencing token), or None.

    Only `queued` jobs whose retry time has come and that nobody asked to cancel are claimed; a job whose
    worker died is put back in the queue by the reaper (`expire_lease`), which counts the lost attempt.
    """
    now = now or utcnow()
    claimed = updated_rows(
        session,
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
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            started_at=now,
            retry_after=None,
        ),
    )
    if not claimed:
        return None
    attempt = session.scalar(select(Job.attempt).where(Job.id == job_id))
    _announce(session, job_id, JobStatus.running, attempt=attempt)
    return attempt


def fenced_write(session: Session, job_id: uuid.UUID, attempt: int, lease_seconds: float, **values: Any) -> None:
    """Renew the lease and set values (progress, metrics; never the status) while this attempt owns the
    running job; else LeaseLost."""
    if "status" in values:
        raise ValueError("the status changes only through a transition of app.job_state")
    now = utcnow()
    values.setdefault("lease_expires_at", now + timedelta(seconds=lease_seconds))
    _fenced(session, job_id, attempt, values, now)


def succeed(session: Session, job_id: uuid.UUID, attempt: int, **results: Any) -> None:
    """running -> succeeded, with the results (best epoch, metrics); LeaseLost if this attempt lost the job."""
    values = {**results, "status": JobStatus.succeeded, "error": None}  # an earlier lost attempt's message
    _fenced(session, job_id, attempt, _finished(values))
    _announce(session, job_id, JobStatus.succeeded, attempt=attempt)


def fail(session: Session, job_id: uuid.UUID, attempt: int, error: str) -> None:
    """running -> failed for good (an error another attempt would hit again); LeaseLost if not ours."""
    _fenced(session, job_id, attempt, _finished({"status": JobStatus.failed, "error": error[:MAX_ERROR]}))
    _announce(session, job_id, JobStatus.failed, error[:MAX_ERROR], attempt)


def confirm_cancel(session: Session, job_id: uuid.UUID, attempt: int) -> None:
    """running -> canceled: the worker stopped because a cancel was asked for; LeaseLost if not ours."""
    _fenced(session, job_id, attempt, _finished({"status": JobStatus.canceled, "error": CANCELED_BY_REQUEST}))
    _announce(session, job_id, JobStatus.canceled, CANCELED_BY_REQUEST, attempt)


def release(session: Session, job_id: uuid.UUID, attempt: int, *, sent: bool) -> JobStatus:
    """Graceful shutdown: running -> queued, not counted as a failure (the last checkpoint stands), or
    canceled if a cancel was asked for. `sent`: the caller publishes the task after the commit."""
    if session.scalar(select(Job.cancel_requested).where(Job.id == job_id)):
        confirm_cancel(session, job_id, attempt)
        return JobStatus.canceled
    now = utcnow()
    values = {"status": JobStatus.queued, "lease_owner": None, "lease_expires_at": None}
    _fenced(session, job_id, attempt, {**values, "enqueued_at": now if sent else None}, now)
    _announce(session, job_id, JobStatus.queued, attempt=attempt)
    return JobStatus.queued


def retry_or_give_up(
    session: Session,
    settings: Settings,
    job_id: uuid.UUID,
    attempt: int,
    cause: str,
    *,
    now: datetime | None = None,
    expired_before: datetime | None = None,
) -> JobStatus:
    """A lost attempt counts as a failure: back to `queued` after the backoff, or `failed` once max_attempts
    failures are spent, or `canceled` if a cancel was asked for meanwhile. Returns the new status.

    `cause` completes "attempt N ..." (e.g. "failed: OperationalError: ..."). `expired_before`: only while the
    lease ran out before then (the reaper's condition: a worker that renewed meanwhile keeps its job).
    LeaseLost if this attempt no longer holds a running job (or, with expired_before, renewed it).
    """
    now = now or utcnow()
    where: list[ColumnElement[bool]] = [Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running]
    if expired_before is not None:
        where.append(Job.lease_expires_at < expired_before)
    row = session.execute(select(Job.failures, Job.max_attempts, Job.cancel_requested).where(*where)).one_or_none()
    if row is None:
        raise LeaseLost(f"job {job_id} attempt {attempt} no longer holds the job")
    seen, max_attempts, cancel_requested = row
    failures = seen + 1
    cause = cause[: MAX_ERROR - 200]
    values: dict[str, Any] = {"failures": failures, "lease_owner": None, "lease_expires_at": None}
    if cancel_requested:
        values |= {"status": JobStatus.canceled, "finished_at": now, "error": CANCELED_BY_REQUEST}
    elif failures >= max_attempts:
        error = f"gave up after {failures} failed attempts: attempt {attempt} {cause}"
        values |= {"status": JobStatus.failed, "finished_at": now, "error": error}
    else:
        delay = retry_delay(settings, failures)
        values |= {
            "status": JobStatus.queued,
            "error": f"attempt {attempt} {cause}; will retry in {delay:g} s",
            "retry_after": now + timedelta(seconds=delay),
            "enqueued_at": None,  # the reaper sends it once retry_after has passed
        }
    # Also conditional on the failures read above: two reapers sweeping at once count the attempt once.
    if not updated_rows(session, update(Job).where(*where, Job.failures == seen).values(**values)):
        raise LeaseLost(f"job {job_id} attempt {attempt} no longer holds the job")
    _announce(session, job_id, JobStatus(values["status"]), values.get("error"), attempt)
    return JobStatus(values["status"])


# ---------------------------------------------------------------- the reaper's


def expired_leases(session: Session, now: datetime) -> Sequence[Row[uuid.UUID, int, str | None]]:
    """(id, attempt, lease owner) of running jobs whose lease ran out before now: their worker is gone."""
    return session.execute(
        select(Job.id, Job.attempt, Job.lease_owner).where(Job.status == JobStatus.running, Job.lease_expires_at < now)
    ).all()


def expire_lease(
    session: Session, settings: Settings, job_id: uuid.UUID, attempt: int, owner: str | None, now: datetime
) -> JobStatus:
    """The reaper found the attempt's lease expired: its worker died (SIGKILL, out of memory) or was cut off.
    The lost attempt goes through retry_or_give_up; LeaseLost if the worker renewed or finished meanwhile."""
    cause = f"lost its worker {owner} (lease expired: killed, out of memory or cut off)"
    return retry_or_give_up(session, settings, job_id, attempt, cause, now=now, expired_before=now)


def unsent(session: Session, now: datetime, stale_before: datetime) -> Sequence[Row[uuid.UUID, datetime | None]]:
    """(id, enqueued_at) of queued jobs due to run whose task was never sent (a requeue, a retry) or was sent
    before stale_before (its task may be lost)."""
    return session.execute(
        select(Job.id, Job.enqueued_at).where(
            Job.status == JobStatus.queued,
            Job.cancel_requested.is_(False),
            (Job.retry_after.is_(None)) | (Job.retry_after <= now),
            (Job.enqueued_at.is_(None)) | (Job.enqueued_at < stale_before),
        )
    ).all()


def mark_sent(session: Session, job_id: uuid.UUID, enqueued_at: datetime | None, now: datetime) -> bool:
    """Record that the queued job's task is sent now, if nobody did since enqueued_at was read; False if not ours
    to send."""
    same = Job.enqueued_at.is_(None) if enqueued_at is None else Job.enqueued_at == enqueued_at
    return bool(
        updated_rows(
            session,
            update(Job).where(Job.id == job_id, Job.status == JobStatus.queued, same).values(enqueued_at=now),
        )
    )


# ---------------------------------------------------------------- reads


def cancel_requested(session: Session, job_id: uuid.UUID) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


# ---------------------------------------------------------------- helpers


def _announce(
    session: Session, job_id: uuid.UUID, status: JobStatus, error: str | None = None, attempt: int | None = None
) -> None:
    """Publish the new status once the transaction that wrote it commits (never if it rolls back)."""
    after_commit(session, lambda: events.publish_status(job_id, status.value, error, attempt))


def _finished(values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "finished_at": utcnow(), "lease_owner": None, "lease_expires_at": None}


def _fenced(
    session: Session, job_id: uuid.UUID, attempt: int, values: dict[str, Any], now: datetime | None = None
) -> None:
    """Set values (and the heartbeat) only while this attempt owns the running job; else LeaseLost."""
    values = {"heartbeat_at": now or utcnow(), **values}
    owned = updated_rows(
        session,
        update(Job).where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.running).values(**values),
    )
    if not owned:
        raise LeaseLost(f"job {job_id} attempt {attempt} no longer owns the job")
