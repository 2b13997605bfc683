"""The worker-side transitions of an export's status, fenced by attempt like a job's (see app.job_state).

A worker claims a queued export by bumping `attempt` and holds a lease it renews while it works; it records the
outcome only while it still holds that attempt. The reaper puts a `running` export whose lease ran out back in
the queue (the lost attempt counts in `failures`), or fails it once the settings' max_attempts are spent, and
re-sends a queued export whose task the broker lost. Asking for an export (queued) is app.services.exports'.
The functions take the caller's session and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import updated_rows
from app.models import Export, ExportStatus, utcnow


def claim(
    session: Session, export_id: uuid.UUID, owner: str, lease_seconds: float, now: datetime | None = None
) -> int | None:
    """queued -> running with the attempt number bumped: the new attempt (the fencing token), or None.

    A duplicate task (re-sent, re-delivered) finds the export running or finished and gets None.
    """
    now = now or utcnow()
    claimed = updated_rows(
        session,
        update(Export)
        .where(Export.id == export_id, Export.status == ExportStatus.queued)
        .values(
            status=ExportStatus.running,
            attempt=Export.attempt + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        ),
    )
    if not claimed:
        return None
    return session.scalar(select(Export.attempt).where(Export.id == export_id))


def fenced_write(session: Session, export_id: uuid.UUID, attempt: int, lease_seconds: float, **values: Any) -> bool:
    """Renew the lease (and set values: the outcome, with its status) only while this attempt holds the running
    export; False once it lost it."""
    values.setdefault("lease_expires_at", utcnow() + timedelta(seconds=lease_seconds))
    return bool(
        updated_rows(
            session,
            update(Export)
            .where(Export.id == export_id, Export.attempt == attempt, Export.status == ExportStatus.running)
            .values(**values),
        )
    )


def _lapsed(now: datetime) -> ColumnElement[bool]:
    # No lease at all: left running by a worker from before export leases.
    return (Export.lease_expires_at.is_(None)) | (Export.lease_expires_at < now)


def expired_leases(session: Session, now: datetime) -> Sequence[Row[uuid.UUID, int, str | None]]:
    """(id, attempt, lease owner) of running exports whose lease ran out before now (or that have none)."""
    return session.execute(
        select(Export.id, Export.attempt, Export.lease_owner).where(Export.status == ExportStatus.running, _lapsed(now))
    ).all()


def expire_lease(
    session: Session, settings: Settings, export_id: uuid.UUID, attempt: int, owner: str | None, now: datetime
) -> ExportStatus | None:
    """The lost attempt counts as a failure: back to `queued` (to be sent again at once), or `failed` once the
    settings' max_attempts are spent. None if its worker renewed the lease or finished meanwhile."""
    where = [Export.id == export_id, Export.attempt == attempt, Export.status == ExportStatus.running, _lapsed(now)]
    seen = session.scalar(select(Export.failures).where(*where))
    if seen is None:
        return None
    failures = seen + 1
    reason = f"attempt {attempt} lost its worker {owner} (lease expired)"
    values: dict[str, Any] = {"failures": failures, "lease_owner": None, "lease_expires_at": None}
    if failures >= settings.max_attempts:
        hint = "the export may be killing its worker (out of memory?)"
        error = f"gave up after {failures} failed attempts: {reason}; {hint}"
        values |= {"status": ExportStatus.failed, "finished_at": now, "error": error}
    else:
        values |= {"status": ExportStatus.queued, "enqueued_at": None, "error": f"{reason}; retrying"}
    if not updated_rows(session, update(Export).where(*where, Export.failures == seen).values(**values)):
        return None
    return ExportStatus(values["status"])


def unsent(session: Session, now: datetime, stale_before: datetime) -> Sequence[Row[uuid.UUID, datetime | None]]:
    """(id, enqueued_at) of queued exports never sent (requeued, or queued without a sender) or sent before
    stale_before (the broker may have lost the task)."""
    return session.execute(
        select(Export.id, Export.enqueued_at).where(
            Export.status == ExportStatus.queued,
            (Export.enqueued_at.is_(None)) | (Export.enqueued_at < stale_before),
        )
    ).all()


def mark_sent(session: Session, export_id: uuid.UUID, enqueued_at: datetime | None, now: datetime) -> bool:
    """Record that the queued export's task is sent now, if nobody did since enqueued_at was read."""
    same = Export.enqueued_at.is_(None) if enqueued_at is None else Export.enqueued_at == enqueued_at
    return bool(
        updated_rows(
            session,
            update(Export)
            .where(Export.id == export_id, Export.status == ExportStatus.queued, same)
            .values(enqueued_at=now),
        )
    )
