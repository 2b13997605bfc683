"""GET /jobs/{id}/events: a job's live events (app.events) as Server-Sent Events, resumable with Last-Event-ID.

The stream replays the job's events after the given id (all of them without one), then follows new ones as the
worker publishes them, and closes after a terminal status. A finished job's stream replays its history and
closes; when its events expired (or were never published), one status event read from SQL stands for them.
Nothing here polls SQL: the job is read once, before the stream opens.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.sse import format_sse_event
from sqlalchemy.orm import Session

from app.errors import ServiceUnavailable
from app.events import Event, EventsUnavailable, Reader
from app.models import TERMINAL_STATUSES
from app.services.jobs import get_job

log = logging.getLogger("visiontune.events")

KEEPALIVE_MS = 15_000  # a comment line after this long without an event keeps proxies from closing the stream
KEEPALIVE = b": keep-alive\n\n"
HISTORY_PAGE = 1000


@dataclass(frozen=True)
class JobSnapshot:
    """What SQL says about the job when its stream opens."""

    id: uuid.UUID
    status: str
    error: str | None
    attempt: int

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def status_event(self) -> bytes:
        """A status event from SQL, without an id: it stands for a finished job's expired events."""
        data = {"status": self.status, "error": self.error, "attempt": self.attempt}
        return format_sse_event(data_str=json.dumps(data), event="status")


def job_snapshot(session: Session, project: str, job_id: uuid.UUID) -> JobSnapshot:
    """The project's job as it is now (404 for another project's job or none)."""
    job = get_job(session, project, job_id)
    return JobSnapshot(job.id, str(job.status), job.error, job.attempt)


async def open_events(reader: Reader | None, snapshot: JobSnapshot, last_event_id: str | None) -> AsyncIterator[bytes]:
    """The SSE body for the job, after last_event_id; 503 (ServiceUnavailable) when the events' Redis is down."""
    if reader is None:
        raise ServiceUnavailable("live events need Redis: set VISIONTUNE_EVENTS_URL", retry_after=60)
    try:
        await reader.check()
    except EventsUnavailable as exc:
        log.warning("events Redis unreachable: %s", exc)
        raise ServiceUnavailable("the events store does not answer; retry shortly", retry_after=5) from None
    return _stream(reader, snapshot, last_event_id or "0-0")


def _encode(event: Event) -> bytes:
    return format_sse_event(data_str=json.dumps(event.data), event=event.type, id=event.id)


async def _stream(reader: Reader, snapshot: JobSnapshot, after: str) -> AsyncIterator[bytes]:
    try:
        if snapshot.finished:
            while page := await reader.history(snapshot.id, after, HISTORY_PAGE):
                for event in page:
                    yield _encode(event)
                    if event.is_terminal:
                        return
                after = page[-1].id
            yield snapshot.status_event()
            return
        while True:
            batch = await reader.wait(snapshot.id, after, KEEPALIVE_MS, HISTORY_PAGE)
            if not batch:
                yield KEEPALIVE
                continue
            for event in batch:
                yield _encode(event)
                if event.is_terminal:
                    return
            after = batch[-1].id
    except Exception as exc:  # Redis went away mid-stream: end it; the client resumes with Last-Event-ID
        log.warning("job %s: event stream ended early (%s: %s)", snapshot.id, exc.__class__.__name__, exc)
