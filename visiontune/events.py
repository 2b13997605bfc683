"""A job's live events: GET /jobs/{id}/events read as Server-Sent Events, reconnecting with Last-Event-ID."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from visiontune.errors import BadResponse, ServerUnreachable, WaitTimeout

if TYPE_CHECKING:
    from visiontune.transport import Transport

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
READ_TIMEOUT = 45.0  # the server sends a keep-alive comment after 15 s without an event
HISTORY_READ_TIMEOUT = 3.0  # follow=False: the history comes at once; this long without an event means no more
RECONNECTS = 8  # tries in a row without an event before giving up (backoff 0.5 s doubling to 8 s)


@dataclass(frozen=True)
class JobEvent:
    """One event: `type` is status, progress or epoch; `id` resumes after it (None for a status read from SQL)."""

    id: str | None
    type: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES

    @property
    def published_ms(self) -> int | None:
        """When it was published (ms since the epoch, from its Redis stream id)."""
        if self.id is None:
            return None
        head = self.id.partition("-")[0]
        return int(head) if head.isdigit() else None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.type, "data": self.data}


def parse_sse(lines: Iterable[str]) -> Iterator[JobEvent]:
    """The events of a text/event-stream, each as soon as its blank line arrives (comments skipped)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError as exc:
                    raise BadResponse(f"an event's data is not JSON ({exc}): {chr(10).join(data)[:200]!r}") from None
                if not isinstance(payload, dict):
                    raise BadResponse(f"an event's data is not a JSON object: {chr(10).join(data)[:200]!r}")
                yield JobEvent(fields.get("id"), fields.get("event", "message"), payload)
            fields, data = {}, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


def _until(lines: Iterable[str], deadline: float | None, job_id: str) -> Iterator[str]:
    """The lines, raising WaitTimeout at the first one read after the deadline: keep-alive comments count too, so a
    wait ends within one keep-alive interval (15 s) of its deadline even while no event comes."""
    for line in lines:
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(job_id, None)
        yield line


def _server_now_ms(response: httpx.Response) -> int:
    """The server's clock when it answered (its Date header, to the second), else this machine's."""
    try:
        return int(parsedate_to_datetime(response.headers["date"]).timestamp() * 1000)
    except (KeyError, TypeError, ValueError):
        return int(time.time() * 1000)


def stream_events(
    transport: Transport,
    job_id: str,
    last_event_id: str | None = None,
    *,
    follow: bool = True,
    deadline: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[JobEvent]:
    """The job's events after last_event_id, ending after the terminal status. A broken or timed-out connection is
    reopened with Last-Event-ID, so no event is lost or repeated. follow=False stops at the events published
    before the request (the history so far). deadline (time.monotonic()) raises WaitTimeout when passed."""
    last = last_event_id
    failures = 0
    cutoff_ms: int | None = None
    while True:
        headers = {"Last-Event-ID": last} if last else {}
        read = READ_TIMEOUT if follow else HISTORY_READ_TIMEOUT
        if deadline is not None:
            read = max(0.1, min(read, deadline - time.monotonic()))
        try:
            with transport.open_stream(f"/jobs/{job_id}/events", headers, read_timeout=read) as response:
                if not follow and cutoff_ms is None:
                    cutoff_ms = _server_now_ms(response) + 999  # the Date header has whole seconds
                for event in parse_sse(_until(response.iter_lines(), deadline, job_id)):
                    failures = 0
                    if cutoff_ms is not None and (event.published_ms or 0) > cutoff_ms:
                        return
                    if event.id is not None:
                        last = event.id
                    yield event
                    if event.is_terminal:
                        return
                    if deadline is not None and time.monotonic() > deadline:
                        raise WaitTimeout(job_id, None)
            reason = "the server closed the stream before the job finished"
        except httpx.ReadTimeout as exc:
            if not follow:
                return  # nothing was published since the history
            reason = f"no event or keep-alive for {read:g} s ({exc})"
        except (httpx.TransportError, ServerUnreachable) as exc:
            reason = f"{exc.__class__.__name__}: {exc}"
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(job_id, None)
        failures += 1
        if failures > RECONNECTS:
            raise ServerUnreachable(f"job {job_id}: lost the event stream ({reason}); gave up after {RECONNECTS} tries")
        sleep(min(8.0, 0.5 * 2 ** (failures - 1)))
