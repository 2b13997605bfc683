"""The reaper: puts back jobs and exports whose worker died, and re-sends tasks the broker lost.

One sweep, every `reaper_interval_seconds`:

1. **Expired leases.** A `running` job whose lease ran out lost its worker (SIGKILL, OOM, power). The lost
   attempt counts as a failure (app.job_state.expire_lease): the job goes back to `queued` with a backoff
   (`retry_after`), or ends `failed` once `max_attempts` failures are spent, or `canceled` if a cancel was asked
   for meanwhile. A `running` export whose lease ran out (or that has none: left by a worker from before export
   leases) goes back to `queued`, or ends `failed` once the settings' `max_attempts` are spent
   (app.export_state.expire_lease).
2. **Queued rows without a task.** A queued job whose retry time has come, or a queued export, that was never
   sent (`enqueued_at` unset: a requeue, a retry) or whose task the broker no longer holds (Redis restarted
   empty, a send that failed) is sent again: one loop for both.

Every change is a conditional UPDATE on what the sweep read, so any number of reapers (one per worker host,
plus the embedded one) can run at once; a task sent twice is harmless, because a worker only trains a job (or
makes an export) it claims. It never imports torch, so it can run next to the API or the launcher.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Row
from sqlalchemy.orm import Session, sessionmaker

from app import events, export_state, job_state
from app.config import Settings
from app.db import make_engine, make_sessionmaker, session_scope
from app.models import utcnow
from app.monitoring.instruments import REAPER_ACTIONS, REAPER_SWEEPS
from app.queue import BrokerProbe, Send, broker_probe, make_celery, send_export_task, send_train_task

log = logging.getLogger("visiontune.reaper")


@dataclass
class SweepReport:
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    canceled: list[uuid.UUID] = field(default_factory=list)
    sent: list[uuid.UUID] = field(default_factory=list)
    exports_requeued: list[uuid.UUID] = field(default_factory=list)
    exports_failed: list[uuid.UUID] = field(default_factory=list)
    exports_sent: list[uuid.UUID] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (self.requeued, self.failed, self.canceled, self.sent)
            + (self.exports_requeued, self.exports_failed, self.exports_sent)
        )

    def actions(self) -> dict[tuple[str, str], int]:
        """How many rows each (kind, action) touched: the labels of visiontune_reaper_actions_total."""
        return {
            ("job", "requeued"): len(self.requeued),
            ("job", "failed"): len(self.failed),
            ("job", "canceled"): len(self.canceled),
            ("job", "resent"): len(self.sent),
            ("export", "requeued"): len(self.exports_requeued),
            ("export", "failed"): len(self.exports_failed),
            ("export", "resent"): len(self.exports_sent),
        }


class _Held:
    """What the broker holds, asked at most once per sweep (None: it cannot tell)."""

    def __init__(self, probe: BrokerProbe | None) -> None:
        self.probe, self.asked = probe, False
        self.ids: set[str] | None = None

    def __call__(self) -> set[str] | None:
        if not self.asked:
            self.asked, self.ids = True, self.probe() if self.probe is not None else None
        return self.ids


# What a kind of row (a job, an export) offers the two generic steps of a sweep.
Expired = Callable[[Session, datetime], Sequence[Row[uuid.UUID, int, str | None]]]
Expire = Callable[[Session, Settings, uuid.UUID, int, str | None, datetime], StrEnum | None]
Unsent = Callable[[Session, datetime, datetime], Sequence[Row[uuid.UUID, datetime | None]]]
MarkSent = Callable[[Session, uuid.UUID, datetime | None, datetime], bool]


def _expire_job(
    s: Session, settings: Settings, job_id: uuid.UUID, attempt: int, owner: str | None, now: datetime
) -> StrEnum | None:
    try:
        return job_state.expire_lease(s, settings, job_id, attempt, owner, now)
    except job_state.LeaseLost:  # renewed or finished since the sweep read it
        return None


class Reaper:
    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        send: Send,
        probe: BrokerProbe | None = None,
        send_export: Send | None = None,
    ) -> None:
        """send and send_export publish a job's or an export's task; without send_export exports are left be."""
        self.settings, self.factory, self.send, self.probe = settings, factory, send, probe
        self.send_export = send_export

    def sweep(self, now: datetime | None = None) -> SweepReport:
        now = now or utcnow()
        report = SweepReport()
        held = _Held(self.probe)
        self._expire(
            "job",
            now,
            job_state.expired_leases,
            _expire_job,
            {"queued": report.requeued, "failed": report.failed, "canceled": report.canceled},
        )
        self._resend("job", now, held, job_state.unsent, job_state.mark_sent, self.send, report.sent)
        if self.send_export is not None:
            buckets = {"queued": report.exports_requeued, "failed": report.exports_failed}
            self._expire("export", now, export_state.expired_leases, export_state.expire_lease, buckets)
            self._resend(
                "export", now, held, export_state.unsent, export_state.mark_sent, self.send_export, report.exports_sent
            )
        for (kind, action), count in report.actions().items():
            REAPER_ACTIONS.labels(kind, action).inc(count)  # zeros too: every series exists from the first sweep
        if report:
            log.info(
                "reaper: requeued %s, failed %s, canceled %s, sent %s; exports: requeued %s, failed %s, sent %s",
                *(
                    len(x)
                    for x in (report.requeued, report.failed, report.canceled, report.sent)
                    + (report.exports_requeued, report.exports_failed, report.exports_sent)
                ),
            )
        return report

    def _expire(
        self, kind: str, now: datetime, expired: Expired, expire: Expire, buckets: dict[str, list[uuid.UUID]]
    ) -> None:
        """Rows whose lease ran out: each lost attempt through its transition, one unit of work each."""
        with session_scope(self.factory) as s:
            rows = expired(s, now)
        for row_id, attempt, owner in rows:
            with session_scope(self.factory) as s:
                status = expire(s, self.settings, row_id, attempt, owner, now)
            if status is not None:
                log.warning("%s %s: attempt %s lost its worker %s -> %s", kind, row_id, attempt, owner, status)
                buckets[str(status)].append(row_id)

    def _resend(
        self,
        kind: str,
        now: datetime,
        held_by_broker: _Held,
        unsent: Unsent,
        mark_sent: MarkSent,
        send: Send,
        sent: list[uuid.UUID],
    ) -> None:
        """Queued rows never sent, or whose task the broker no longer holds: sent again, once per sweep."""
        stale_before = now - timedelta(seconds=self.settings.requeue_grace_seconds)
        with session_scope(self.factory) as s:
            due = unsent(s, now, stale_before)
        held: set[str] | None = set()
        if any(enqueued is not None for _, enqueued in due):
            held = held_by_broker()
        for row_id, enqueued in due:
            if enqueued is not None and (held is None or str(row_id) in held):
                continue  # the broker still holds its task (or we cannot tell): leave it be
            with session_scope(self.factory) as s:
                if not mark_sent(s, row_id, enqueued, now):
                    continue  # sent (or claimed) by someone else meanwhile
            try:
                send(row_id)
            except Exception:  # broker down: enqueued_at goes stale and a later sweep sends it again
                log.warning("reaper: could not send %s %s", kind, row_id, exc_info=True)
                continue
            sent.append(row_id)

    def run_forever(self, stop: threading.Event) -> None:
        """Sweep every reaper_interval_seconds until stop is set; a failed sweep is logged and retried."""
        while not stop.is_set():
            try:
                self.sweep()
                REAPER_SWEEPS.labels("ok").inc()
            except Exception:
                REAPER_SWEEPS.labels("error").inc()
                log.warning("reaper sweep failed; retrying", exc_info=True)
            stop.wait(self.settings.reaper_interval_seconds)


def make_reaper(settings: Settings) -> Reaper:
    """A reaper on the configured database and broker (sending with a Celery app of its own); the jobs it
    requeues or fails are published as status events."""
    events.configure(settings)
    celery = make_celery(settings)
    return Reaper(
        settings,
        make_sessionmaker(make_engine(settings.resolved_database_url())),
        lambda job_id: send_train_task(celery, settings, job_id, resent=True),
        broker_probe(settings),
        lambda export_id: send_export_task(celery, settings, export_id, resent=True),
    )


def run_reaper(settings: Settings) -> int:
    """`visiontune reaper`: sweep until SIGINT/SIGTERM."""
    stop = threading.Event()

    def request_stop(*_args: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)
    log.info("reaper: sweeping every %.1fs (lease %.0fs)", settings.reaper_interval_seconds, settings.lease_seconds)
    make_reaper(settings).run_forever(stop)
    return 0
