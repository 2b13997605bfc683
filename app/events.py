"""A job's live events: the one publisher (worker, reaper, API) and the reader SSE uses, over Redis Streams.

Each job has one stream, `visiontune:events:job:<id>`; an entry is {type, data (JSON)} and its Redis id is the
SSE event id, so a client that reconnects with Last-Event-ID resumes right after the last entry it saw.

    type       data
    status     status, error, attempt                       every transition of app.job_state, after its commit
    progress   epoch, epochs, step, steps, loss, images_per_second, eta_seconds     about once a second per job
    epoch      epoch, train_loss, train_accuracy, val_loss, val_accuracy, learning_rate, seconds, images_per_second

Publishing never fails or slows the caller: a Redis error is logged (once a minute) and swallowed. The process-
wide publisher is set up at start-up (`configure`) by the API, the worker process and the reaper; until then
publishing does nothing (unit tests, scripts). redis is imported only then, never when this module is.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.config import Settings
from app.models import TERMINAL_STATUSES

if TYPE_CHECKING:
    import redis
    import redis.asyncio

log = logging.getLogger("visiontune.events")

STREAM_PREFIX = "visiontune:events:job:"
TERMINAL = frozenset(str(s) for s in TERMINAL_STATUSES)
EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")
SOCKET_TIMEOUT = 2.0  # seconds a publish may wait on Redis before it is given up (training goes on)
ERROR_LOG_INTERVAL = 60.0
PAUSE_AFTER_ERROR = 5.0  # seconds no publish is tried after one failed: a hung Redis costs training one timeout


def stream_key(job_id: uuid.UUID | str) -> str:
    return f"{STREAM_PREFIX}{job_id}"


def events_url(settings: Settings) -> str | None:
    """Where the streams live: events_url, else the broker's Redis; None when neither is Redis."""
    return settings.events_url or settings.broker_redis_url()


@dataclass(frozen=True)
class Event:
    id: str  # the Redis stream id, also the SSE id
    type: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL


def decode(entry_id: bytes | str, fields: dict[Any, Any]) -> Event:
    """An Event from one XRANGE/XREAD entry (bytes or str fields)."""

    def text(value: bytes | str) -> str:
        return value.decode() if isinstance(value, bytes) else value

    named = {text(k): text(v) for k, v in fields.items()}
    return Event(text(entry_id), named.get("type", "unknown"), json.loads(named.get("data", "{}")))


class Publisher:
    """Appends events to the jobs' streams; errors are logged and swallowed."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_len: int = 10_000,
        ttl_seconds: float = 7 * 86400,
        progress_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.max_len = max_len
        self.ttl_seconds = ttl_seconds
        self.progress_interval = progress_interval
        self.clock = clock
        self._last_progress: dict[str, float] = {}
        self._last_error = -ERROR_LOG_INTERVAL
        self._paused_until = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> Publisher:
        import redis  # here, not at import: job_state (hence the reaper and the API) load this module

        client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT)
        return cls(
            client,
            max_len=settings.events_max_len,
            ttl_seconds=settings.events_ttl_seconds,
            progress_interval=settings.events_progress_interval_seconds,
        )

    def publish(self, job_id: uuid.UUID | str, type_: str, data: dict[str, Any]) -> str | None:
        """Append one event; its id, or None when Redis refused (logged, never raised)."""
        key = stream_key(job_id)
        if time.monotonic() < self._paused_until:
            return None
        try:
            fields = {"type": type_, "data": json.dumps(data, default=str)}
            # One round trip: the entry, and the stream's expiry pushed back (a job's events outlive its last one
            # by ttl_seconds, finished or abandoned).
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(key, fields, maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]
            pipe.expire(key, max(1, int(self.ttl_seconds)))
            entry_id, _ = pipe.execute()
            if type_ == "status" and data.get("status") in TERMINAL:
                with self._lock:
                    self._last_progress.pop(key, None)
        except Exception as exc:  # never let a lost Redis stop or slow training
            self._log_error(exc)
            return None
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def progress_due(self, job_id: uuid.UUID | str) -> bool:
        """True (and the clock restarted) when this job's last progress event is progress_interval old."""
        key, now = stream_key(job_id), self.clock()
        with self._lock:
            if now - self._last_progress.get(key, -float("inf")) < self.progress_interval:
                return False
            self._last_progress[key] = now
            return True

    def _log_error(self, exc: Exception) -> None:
        now = time.monotonic()
        self._paused_until = now + PAUSE_AFTER_ERROR
        if now - self._last_error >= ERROR_LOG_INTERVAL:
            self._last_error = now
            log.warning("could not publish a job event (%s: %s); training goes on", exc.__class__.__name__, exc)


# ---------------------------------------------------------------- the process-wide publisher

_publisher: Publisher | None = None


def configure(settings: Settings) -> Publisher | None:
    """Set up this process's publisher from settings (no connection is made yet); None when there is no Redis."""
    global _publisher
    url = events_url(settings)
    _publisher = Publisher.from_url(url, settings) if url else None
    if url is None:
        log.warning("job events are off: set VISIONTUNE_EVENTS_URL to a Redis URL")
    return _publisher


def set_publisher(publisher: Publisher | None) -> None:
    """Install (or remove, with None) the process-wide publisher: tests, embedders."""
    global _publisher
    _publisher = publisher


def publisher() -> Publisher | None:
    return _publisher


def publish(job_id: uuid.UUID | str, type_: str, data: dict[str, Any]) -> str | None:
    """Publish through the process-wide publisher; nothing when none is configured."""
    return _publisher.publish(job_id, type_, data) if _publisher is not None else None


def publish_status(job_id: uuid.UUID | str, status: str, error: str | None = None, attempt: int | None = None) -> None:
    publish(job_id, "status", {"status": str(status), "error": error, "attempt": attempt})


# ---------------------------------------------------------------- the reader (async, for SSE)


class EventsUnavailable(RuntimeError):
    """The events' Redis does not answer."""


class Reader:
    """Reads a job's stream for SSE: the history after an id, then new entries as they come."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> Reader:
        import redis.asyncio

        return cls(redis.asyncio.Redis.from_url(url, socket_connect_timeout=SOCKET_TIMEOUT))

    async def check(self) -> None:
        """EventsUnavailable unless Redis answers now."""
        try:
            await self.client.ping()  # type: ignore[misc]  # redis-py types ping for both clients
        except Exception as exc:
            raise EventsUnavailable(f"{exc.__class__.__name__}: {exc}") from exc

    async def history(self, job_id: uuid.UUID | str, after: str = "0-0", count: int = 1000) -> list[Event]:
        """Entries after the id `after` (exclusive), oldest first, at most count."""
        rows = await self.client.xrange(stream_key(job_id), min=f"({after}", max="+", count=count)
        return [decode(entry_id, fields) for entry_id, fields in rows]

    async def wait(self, job_id: uuid.UUID | str, after: str, block_ms: int, count: int = 1000) -> list[Event]:
        """Entries after `after`, waiting up to block_ms for the first; [] on timeout."""
        reply = await self.client.xread({stream_key(job_id): after}, count=count, block=block_ms)
        return [decode(entry_id, fields) for _key, entries in reply or [] for entry_id, fields in entries]

    async def close(self) -> None:
        await self.client.aclose()
