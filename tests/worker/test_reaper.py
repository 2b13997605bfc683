"""The reaper on its own, on SQLite and PostgreSQL, with a fake sender and broker probe: an expired lease is a lost
attempt (requeued with a backoff, failed after max attempts, canceled when asked); a queued task the broker lost
is re-sent once; one it still holds is left alone; exports go through the same loops."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import update

from app import job_state
from app.db import session_scope
from app.models import Export, ExportStatus, Job, JobStatus, utcnow
from tests.factories import only
from worker.reaper import Reaper


def job(factory, **values) -> uuid.UUID:
    """A job submitted (not sent) and then given values, as a worker or an earlier sweep would leave it."""
    with session_scope(factory) as s:
        row = Job(model_name=f"m-{uuid.uuid4().hex[:8]}", arch="resnet18", weights="none", strategy="full", config={})
        job_id = job_state.submit(s, row, sent=False).id
    if values:
        with session_scope(factory) as s:
            s.execute(update(Job).where(Job.id == job_id).values(**values))
    return job_id


def running(factory, lease_expires_at: datetime, **values) -> uuid.UUID:
    values = {"attempt": 1, "lease_owner": "w:1", **values}
    return job(factory, status=JobStatus.running, lease_expires_at=lease_expires_at, **values)


def get(factory, job_id: uuid.UUID) -> Job:
    with session_scope(factory) as s:
        found = s.get(Job, job_id)
        assert found is not None
        return found


class FakeBroker:
    """Records what was sent; `held` is what the probe answers (None: it cannot tell)."""

    def __init__(self, held: set[str] | None = None) -> None:
        self.sent: list[uuid.UUID] = []
        self.held = held
        self.probed = 0

    def send(self, row_id: uuid.UUID) -> None:
        self.sent.append(row_id)

    def probe(self) -> set[str] | None:
        self.probed += 1
        return self.held


def test_expired_leases_are_requeued_with_a_backoff_failed_or_canceled(settings, factory):
    now = utcnow()
    lapsed = now - timedelta(seconds=1)
    retry = running(factory, lapsed)
    spent = running(factory, lapsed, attempt=3, failures=2)  # max_attempts 3 (the settings' default)
    asked = running(factory, lapsed, cancel_requested=True)
    alive = running(factory, now + timedelta(seconds=30))
    broker = FakeBroker()
    report = Reaper(settings, factory, broker.send, broker.probe).sweep(now=now)
    mine = only(retry, spent, asked, alive)
    assert mine(report.requeued) == [retry] and mine(report.failed) == [spent] and mine(report.canceled) == [asked]
    assert mine(broker.sent) == []  # a retry waits for its backoff
    requeued = get(factory, retry)
    assert requeued.status == JobStatus.queued and requeued.failures == 1 and requeued.lease_owner is None
    assert requeued.retry_after == now + timedelta(seconds=settings.retry_backoff_seconds)
    assert requeued.error.startswith("attempt 1 lost its worker w:1 (lease expired")
    failed = get(factory, spent)
    assert failed.status == JobStatus.failed and failed.failures == 3 and failed.finished_at is not None
    assert failed.error.startswith("gave up after 3 failed attempts: attempt 3 lost its worker w:1 (lease expired")
    assert get(factory, asked).status == JobStatus.canceled and get(factory, asked).error == "canceled by request"
    assert get(factory, alive).status == JobStatus.running and get(factory, alive).failures == 0
    # Once the backoff has passed the retry is sent, once.
    later = now + timedelta(seconds=settings.retry_backoff_seconds)
    assert mine(Reaper(settings, factory, broker.send, broker.probe).sweep(now=later).sent) == [retry]
    assert mine(Reaper(settings, factory, broker.send, broker.probe).sweep(now=later).sent) == []
    assert mine(broker.sent) == [retry]


def test_a_lost_task_is_sent_again_once_and_a_held_one_is_left_alone(settings, factory):
    now = utcnow()
    stale = now - timedelta(seconds=settings.requeue_grace_seconds + 1)
    lost = job(factory, enqueued_at=stale)
    held = job(factory, enqueued_at=stale)
    fresh = job(factory, enqueued_at=now)  # just sent: its worker may be about to claim it
    never = job(factory)  # never sent (a requeue, a send before the commit failed)
    waiting = job(factory, retry_after=now + timedelta(minutes=5))  # its retry is not due yet
    canceled = job(factory, cancel_requested=True)
    broker = FakeBroker(held={str(held)})
    reaper = Reaper(settings, factory, broker.send, broker.probe)
    mine = only(lost, held, fresh, never, waiting, canceled)
    assert sorted(mine(reaper.sweep(now=now).sent)) == sorted([lost, never])
    assert broker.probed == 1  # asked once per sweep
    assert mine(reaper.sweep(now=now).sent) == []  # just sent: not again within the grace period
    assert sorted(mine(broker.sent)) == sorted([lost, never])
    assert get(factory, lost).enqueued_at == now and get(factory, held).enqueued_at == stale


def test_when_the_broker_cannot_tell_only_what_was_never_sent_is_sent(settings, factory):
    now = utcnow()
    maybe_lost = job(factory, enqueued_at=now - timedelta(seconds=settings.requeue_grace_seconds + 1))
    never = job(factory)
    broker = FakeBroker(held=None)
    report = Reaper(settings, factory, broker.send, broker.probe).sweep(now=now)
    assert only(maybe_lost, never)(report.sent) == [never]


def test_a_send_that_fails_is_tried_again_by_a_later_sweep(settings, factory):
    now = utcnow()
    job_id = job(factory)
    down = Reaper(settings, factory, lambda _id: (_ for _ in ()).throw(ConnectionError("broker down")))
    assert only(job_id)(down.sweep(now=now).sent) == []
    assert get(factory, job_id).enqueued_at == now  # counted as sent; it goes stale and is sent again
    broker = FakeBroker(held=set())
    later = now + timedelta(seconds=settings.requeue_grace_seconds + 1)
    assert only(job_id)(Reaper(settings, factory, broker.send, broker.probe).sweep(now=later).sent) == [job_id]


def export(factory, **values) -> uuid.UUID:
    job_id = job(factory, status=JobStatus.succeeded)
    with session_scope(factory) as s:
        row = Export(project="default", job_id=job_id, format="onnx", **{"status": ExportStatus.queued, **values})
        s.add(row)
        s.flush()
        return row.id


def test_exports_go_through_the_same_loops(settings, factory):
    now = utcnow()
    lapsed = now - timedelta(seconds=1)
    dead = export(factory, status=ExportStatus.running, attempt=1, lease_owner="w:1", lease_expires_at=lapsed)
    spent = export(
        factory, status=ExportStatus.running, attempt=3, failures=2, lease_owner="w:1", lease_expires_at=lapsed
    )
    lost = export(factory, enqueued_at=now - timedelta(seconds=settings.requeue_grace_seconds + 1))
    held = export(factory, enqueued_at=now - timedelta(seconds=settings.requeue_grace_seconds + 1))
    jobs, exports = FakeBroker(held={str(held)}), FakeBroker()
    report = Reaper(settings, factory, jobs.send, jobs.probe, send_export=exports.send).sweep(now=now)
    mine = only(dead, spent, lost, held)
    assert mine(report.exports_requeued) == [dead] and mine(report.exports_failed) == [spent]
    assert sorted(mine(report.exports_sent)) == sorted(mine(exports.sent)) == sorted([dead, lost])  # sent at once
    assert mine(jobs.sent) == [] and jobs.probed == 1  # one probe serves both loops
    # Without an export sender, exports are left be.
    assert mine(Reaper(settings, factory, jobs.send).sweep(now=now + timedelta(hours=1)).exports_sent) == []


def test_reaper_actions_are_counted_in_the_metrics(settings, factory):
    """visiontune_reaper_actions_total moves by what each sweep did (read back through the text exposition)."""
    from prometheus_client import REGISTRY, generate_latest

    from tests.prometheus import parse, value

    def counts() -> dict[tuple[str, str], float]:
        samples = parse(generate_latest(REGISTRY).decode())
        keys = [("job", a) for a in ("requeued", "failed", "canceled", "resent")]
        keys += [("export", a) for a in ("requeued", "failed", "resent")]
        return {k: value(samples, "visiontune_reaper_actions_total", kind=k[0], action=k[1]) for k in keys}

    now = utcnow()
    lapsed = now - timedelta(seconds=1)
    running(factory, lapsed)
    running(factory, lapsed, attempt=3, failures=2)
    running(factory, lapsed, cancel_requested=True)
    job(factory)  # never sent
    before = counts()
    broker = FakeBroker(held=set())
    report = Reaper(settings, factory, broker.send, broker.probe).sweep(now=now)
    after = counts()
    moved = {k: after[k] - before[k] for k in after}
    assert moved == {k: float(n) for k, n in report.actions().items()}  # other tests' rows may count too
    assert all(moved[("job", a)] >= 1 for a in ("requeued", "failed", "canceled", "resent")), moved
