"""The reaper: puts back jobs whose worker died and re-sends tasks the broker lost.

One sweep, every `reaper_interval_seconds`:

1. **Expired leases.** A `running` job whose lease ran out lost its worker (SIGKILL, OOM, power). The lost
   attempt counts as a failure: the job goes back to `queued` with a backoff (`retry_after`), or ends `failed`
   once `max_attempts` failures are spent, or `canceled` if a cancel was asked for meanwhile.
2. **Queued jobs without a task.** A queued job whose retry time has come and that was never sent
   (`enqueued_at` unset: a requeue or a retry), or whose task the broker no longer holds (Redis restarted
   empty, a send that failed), is sent again.
3. **Exports, the same way.** A `running` export whose lease ran out (or that has none: left by a worker from
   before export leases) goes back to `queued` and is sent again at once, the lost attempt counted in its
   `failures`; once `max_attempts` (the settings') are spent it ends `failed` with the reason. A queued export
   never sent, or whose task the broker no longer holds, is sent again.

Every change is a conditional UPDATE on what the sweep read, so any number of reapers (one per worker host,
plus the embedded one) can run at once; a task sent twice is harmless, because a worker only trains a job (or
makes an export) it claims. It never imports torch, so it can run next to the API or the launcher.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import session_scope
from app.models import Export, ExportStatus, Job, JobStatus


def retry_delay(settings: Settings, failures: int) -> float:
    """Backoff before retry number `failures`: retry_backoff_seconds doubling, at most 10 minutes."""
    return min(600.0, settings.retry_backoff_seconds * 2 ** max(0, failures - 1))


log = logging.getLogger("visiontune.reaper")

# Names the broker holds a job's task under: job id strings of queued or delivered-but-unacked messages.
BrokerProbe = Callable[[], set[str] | None]


def utcnow() -> datetime:
    return datetime.now(UTC)


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


class _Held:
    """What the broker holds, asked at most once per sweep (None: it cannot tell)."""

    def __init__(self, probe: BrokerProbe | None) -> None:
        self.probe, self.asked, self.ids = probe, False, None

    def __call__(self) -> set[str] | None:
        if not self.asked:
            self.asked, self.ids = True, self.probe() if self.probe is not None else None
        return self.ids


def redis_probe(broker_url: str, queue: str, delivered_within: float) -> BrokerProbe:
    """Job ids of training tasks in the Redis queue, or delivered less than `delivered_within` seconds ago and
    not yet acknowledged (kombu's layout).

    A worker claims its job as soon as a message is delivered. A message delivered longer ago whose job is still
    queued went to a worker that died before claiming it: Redis would hand it out again only after the
    visibility timeout (hours), so it does not count as held, and the reaper sends the job again. A duplicate
    message is harmless: whichever worker claims second finds the job no longer queued.
    """
    import json
    import time

    import redis

    from worker.celery_app import redis_queue_keys

    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    keys = redis_queue_keys(queue)

    def held() -> set[str] | None:
        try:
            raw = [item for key in keys for item in client.lrange(key, 0, -1)]
            recent = client.zrangebyscore("unacked_index", time.time() - delivered_within, "+inf")
            if recent:
                raw += [item for item in client.hmget("unacked", recent) if item is not None]
        except redis.RedisError:
            log.warning("cannot read the broker's queue; not re-sending anything this sweep", exc_info=True)
            return None
        ids: set[str] = set()
        for item in raw:
            try:
                message = json.loads(item)
                if isinstance(message, list):  # unacked entries are [message, exchange, routing key]
                    message = message[0]
                argsrepr = str(message.get("headers", {}).get("argsrepr", ""))
            except (ValueError, AttributeError, IndexError, TypeError):
                continue
            ids.update(part.strip("()[]'\", ") for part in argsrepr.split(","))
        return ids

    return held


class Reaper:
    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        send: Callable[[uuid.UUID], None],
        probe: BrokerProbe | None = None,
        send_export: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        """send and send_export publish a job's or an export's task; without send_export exports are left be."""
        self.settings, self.factory, self.send, self.probe = settings, factory, send, probe
        self.send_export = send_export

    def sweep(self, now: datetime | None = None) -> SweepReport:
        now = now or utcnow()
        report = SweepReport()
        held = _Held(self.probe)
        self._expire_leases(now, report)
        self._send_due(now, report, held)
        if self.send_export is not None:
            self._expire_export_leases(now, report)
            self._send_due_exports(now, report, held, self.send_export)
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

    def _expire_leases(self, now: datetime, report: SweepReport) -> None:
        with session_scope(self.factory) as s:
            expired = s.execute(
                select(
                    Job.id, Job.attempt, Job.failures, Job.max_attempts, Job.cancel_requested, Job.lease_owner
                ).where(Job.status == JobStatus.running, Job.lease_expires_at < now)
            ).all()
        for job_id, attempt, failures, max_attempts, cancel, owner in expired:
            failures += 1
            reason = f"attempt {attempt} lost its worker {owner} (lease expired)"
            if cancel:
                values = dict(status=JobStatus.canceled, finished_at=now, error="canceled by request")
                bucket = report.canceled
            elif failures >= max_attempts:
                values = dict(
                    status=JobStatus.failed,
                    finished_at=now,
                    error=f"gave up after {failures} failed attempts: {reason}; the job may be killing its "
                    "worker (out of memory?)",
                )
                bucket = report.failed
            else:
                delay = retry_delay(self.settings, failures)
                values = dict(
                    status=JobStatus.queued,
                    retry_after=now + timedelta(seconds=delay),
                    enqueued_at=None,
                    error=f"{reason}; retrying",
                )
                bucket = report.requeued
            with session_scope(self.factory) as s:
                done = s.execute(
                    update(Job)
                    .where(
                        Job.id == job_id,
                        Job.attempt == attempt,
                        Job.status == JobStatus.running,
                        Job.lease_expires_at < now,
                    )
                    .values(failures=failures, lease_owner=None, lease_expires_at=None, **values)
                ).rowcount
            if done:
                log.warning("job %s: %s -> %s", job_id, reason, values["status"])
                bucket.append(job_id)

    def _send_due(self, now: datetime, report: SweepReport, held_by_broker: _Held) -> None:
        stale_before = now - timedelta(seconds=self.settings.requeue_grace_seconds)
        with session_scope(self.factory) as s:
            due = s.execute(
                select(Job.id, Job.enqueued_at).where(
                    Job.status == JobStatus.queued,
                    Job.cancel_requested.is_(False),
                    (Job.retry_after.is_(None)) | (Job.retry_after <= now),
                    (Job.enqueued_at.is_(None)) | (Job.enqueued_at < stale_before),
                )
            ).all()
        if not due:
            return
        held: set[str] | None = set()
        if any(enqueued is not None for _, enqueued in due):
            held = held_by_broker()
        for job_id, enqueued in due:
            if enqueued is not None and (held is None or str(job_id) in held):
                continue  # the broker still holds its task (or we cannot tell): leave it be
            with session_scope(self.factory) as s:
                condition = Job.enqueued_at.is_(None) if enqueued is None else Job.enqueued_at == enqueued
                claimed = s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == JobStatus.queued, condition)
                    .values(enqueued_at=now)
                ).rowcount
            if not claimed:
                continue
            try:
                self.send(job_id)
            except Exception:  # broker down: enqueued_at goes stale and a later sweep sends it again
                log.warning("reaper: could not send job %s", job_id, exc_info=True)
                continue
            report.sent.append(job_id)

    def _expire_export_leases(self, now: datetime, report: SweepReport) -> None:
        """Running exports whose lease ran out: back to the queue (sent below), or failed once attempts are spent."""
        lapsed = (Export.lease_expires_at.is_(None)) | (Export.lease_expires_at < now)
        with session_scope(self.factory) as s:
            expired = s.execute(
                select(Export.id, Export.attempt, Export.failures, Export.lease_owner).where(
                    Export.status == ExportStatus.running, lapsed
                )
            ).all()
        max_attempts = self.settings.max_attempts
        for export_id, attempt, failures, owner in expired:
            failures += 1
            reason = f"attempt {attempt} lost its worker {owner} (lease expired)"
            if failures >= max_attempts:
                values: dict[str, object] = dict(
                    status=ExportStatus.failed,
                    finished_at=now,
                    error=f"gave up after {failures} failed attempts: {reason}; the export may be killing its "
                    "worker (out of memory?)",
                )
                bucket = report.exports_failed
            else:
                values = dict(status=ExportStatus.queued, enqueued_at=None, error=f"{reason}; retrying")
                bucket = report.exports_requeued
            with session_scope(self.factory) as s:
                done = s.execute(
                    update(Export)
                    .where(
                        Export.id == export_id,
                        Export.attempt == attempt,
                        Export.status == ExportStatus.running,
                        lapsed,
                    )
                    .values(failures=failures, lease_owner=None, lease_expires_at=None, **values)
                ).rowcount
            if done:
                log.warning("export %s: %s -> %s", export_id, reason, values["status"])
                bucket.append(export_id)

    def _send_due_exports(
        self, now: datetime, report: SweepReport, held_by_broker: _Held, send: Callable[[uuid.UUID], None]
    ) -> None:
        """Queued exports never sent (requeued above, or queued without a sender) or whose task the broker lost."""
        stale_before = now - timedelta(seconds=self.settings.requeue_grace_seconds)
        with session_scope(self.factory) as s:
            due = s.execute(
                select(Export.id, Export.enqueued_at).where(
                    Export.status == ExportStatus.queued,
                    (Export.enqueued_at.is_(None)) | (Export.enqueued_at < stale_before),
                )
            ).all()
        held: set[str] | None = held_by_broker() if any(enqueued is not None for _, enqueued in due) else set()
        for export_id, enqueued in due:
            if enqueued is not None and (held is None or str(export_id) in held):
                continue  # the broker still holds its task (or we cannot tell): leave it be
            with session_scope(self.factory) as s:
                condition = Export.enqueued_at.is_(None) if enqueued is None else Export.enqueued_at == enqueued
                claimed = s.execute(
                    update(Export)
                    .where(Export.id == export_id, Export.status == ExportStatus.queued, condition)
                    .values(enqueued_at=now)
                ).rowcount
            if not claimed:
                continue
            try:
                send(export_id)
            except Exception:  # broker down: enqueued_at goes stale and a later sweep sends it again
                log.warning("reaper: could not send export %s", export_id, exc_info=True)
                continue
            report.exports_sent.append(export_id)

    def run_forever(self, stop: threading.Event) -> None:
        """Sweep every reaper_interval_seconds until stop is set; a failed sweep is logged and retried."""
        while not stop.is_set():
            try:
                self.sweep()
            except Exception:
                log.warning("reaper sweep failed; retrying", exc_info=True)
            stop.wait(self.settings.reaper_interval_seconds)


def make_reaper(settings: Settings) -> Reaper:
    """A reaper on the configured database and broker (sending with a Celery app of its own)."""
    from app.db import make_engine, make_sessionmaker
    from worker.celery_app import make_celery, send_export_task, send_train_task

    celery = make_celery(settings)
    probe = (
        redis_probe(settings.broker_url, settings.queue, settings.requeue_grace_seconds)
        if settings.broker_url.startswith("redis")
        else None
    )
    return Reaper(
        settings,
        make_sessionmaker(make_engine(settings.resolved_database_url())),
        lambda job_id: send_train_task(celery, settings, job_id, resent=True),
        probe,
        lambda export_id: send_export_task(celery, settings, export_id, resent=True),
    )


def run_reaper(settings: Settings) -> int:
    """`visiontune reaper`: sweep until SIGINT/SIGTERM."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_a: stop.set())
    log.info("reaper: sweeping every %.1fs (lease %.0fs)", settings.reaper_interval_seconds, settings.lease_seconds)
    make_reaper(settings).run_forever(stop)
    return 0
