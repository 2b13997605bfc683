"""The job state machine (app.job_state) on SQLite and PostgreSQL: every allowed transition, and every forbidden
one refused (a claim of a job that is not queued, a write by a stale attempt or on a job that is not running, a
cancel of a finished job)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from app import job_state
from app.auth import cli_actor
from app.db import session_scope
from app.errors import Conflict
from app.job_state import LeaseLost
from app.models import Job, JobStatus, utcnow
from app.services.jobs import cancel_job


def submit(factory, max_attempts: int = 3, sent: bool = True) -> uuid.UUID:
    with session_scope(factory) as s:
        job = Job(model_name=f"m-{uuid.uuid4().hex[:8]}", arch="resnet18", weights="none", strategy="full", config={})
        job.max_attempts = max_attempts
        return job_state.submit(s, job, sent=sent).id


def claim(factory, settings, job_id: uuid.UUID, owner: str = "w1") -> int | None:
    with session_scope(factory) as s:
        return job_state.claim(s, job_id, owner, settings.lease_seconds)


def do(factory, action: Callable[[Session], Any]) -> Any:
    with session_scope(factory) as s:
        return action(s)


def row(factory, job_id: uuid.UUID) -> Job:
    with session_scope(factory) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def snapshot(factory, job_id: uuid.UUID) -> dict[str, Any]:
    job = row(factory, job_id)
    names = ("status", "attempt", "failures", "lease_owner", "lease_expires_at", "error", "last_epoch", "finished_at")
    return {name: getattr(job, name) for name in names}


def expire(factory, job_id: uuid.UUID) -> None:
    with session_scope(factory) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def in_state(factory, settings, state: str) -> tuple[uuid.UUID, int]:
    """A job brought to state through the transitions themselves; (id, its latest attempt)."""
    job_id = submit(factory)
    if state == "queued":
        return job_id, 0
    if state == "canceled":
        assert do(factory, lambda s: job_state.cancel(s, job_id))
        return job_id, 0
    attempt = claim(factory, settings, job_id)
    assert attempt == 1
    if state == "succeeded":
        do(factory, lambda s: job_state.succeed(s, job_id, attempt, best_epoch=1))
    elif state == "failed":
        do(factory, lambda s: job_state.fail(s, job_id, attempt, "boom"))
    return job_id, attempt


def worker_writes(settings) -> dict[str, Callable[[Session, uuid.UUID, int], Any]]:
    """Every write a worker makes under its attempt's fence."""
    return {
        "fenced_write": lambda s, j, a: job_state.fenced_write(s, j, a, settings.lease_seconds, last_epoch=7),
        "succeed": lambda s, j, a: job_state.succeed(s, j, a, best_epoch=7),
        "fail": lambda s, j, a: job_state.fail(s, j, a, "stale"),
        "confirm_cancel": lambda s, j, a: job_state.confirm_cancel(s, j, a),
        "release": lambda s, j, a: job_state.release(s, j, a, sent=True),
        "retry_or_give_up": lambda s, j, a: job_state.retry_or_give_up(s, settings, j, a, "failed: stale"),
    }


# ---------------------------------------------------------------- allowed


def test_submit_queues_and_claim_takes_the_job_with_a_new_attempt(settings, factory):
    job_id = submit(factory)
    queued = row(factory, job_id)
    assert queued.status == JobStatus.queued and queued.attempt == 0 and queued.enqueued_at is not None
    assert row(factory, submit(factory, sent=False)).enqueued_at is None  # the reaper sends it
    before = utcnow()
    assert claim(factory, settings, job_id, "w1") == 1
    running = row(factory, job_id)
    assert running.status == JobStatus.running and running.attempt == 1 and running.lease_owner == "w1"
    assert running.lease_expires_at >= before + timedelta(seconds=settings.lease_seconds)
    assert running.started_at is not None and running.heartbeat_at is not None


def test_the_owner_renews_its_lease_and_records_progress(settings, factory):
    job_id, attempt = in_state(factory, settings, "running")
    first = row(factory, job_id).lease_expires_at
    do(factory, lambda s: job_state.fenced_write(s, job_id, attempt, settings.lease_seconds + 60, last_epoch=3))
    renewed = row(factory, job_id)
    assert renewed.status == JobStatus.running and renewed.last_epoch == 3 and renewed.lease_expires_at > first


@pytest.mark.parametrize(
    ("finish", "status", "error"),
    [
        (lambda s, j, a: job_state.succeed(s, j, a, best_epoch=2), JobStatus.succeeded, None),
        (lambda s, j, a: job_state.fail(s, j, a, "x" * 5000), JobStatus.failed, "x" * job_state.MAX_ERROR),
        (lambda s, j, a: job_state.confirm_cancel(s, j, a), JobStatus.canceled, job_state.CANCELED_BY_REQUEST),
    ],
    ids=["succeed", "fail", "confirm_cancel"],
)
def test_a_running_job_finishes(settings, factory, finish, status, error):
    job_id, attempt = in_state(factory, settings, "running")
    do(factory, lambda s: finish(s, job_id, attempt))
    done = row(factory, job_id)
    assert done.status == status and done.error == error and done.finished_at is not None
    assert done.lease_owner is None and done.lease_expires_at is None
    assert claim(factory, settings, job_id) is None  # finished for good


def test_release_hands_the_job_back_without_counting_a_failure_or_cancels_it(settings, factory):
    job_id, attempt = in_state(factory, settings, "running")
    assert do(factory, lambda s: job_state.release(s, job_id, attempt, sent=False)) == JobStatus.queued
    released = row(factory, job_id)
    assert released.status == JobStatus.queued and released.failures == 0 and released.lease_owner is None
    assert released.enqueued_at is None and released.retry_after is None
    assert claim(factory, settings, job_id) == 2  # at once: no backoff
    assert do(factory, lambda s: job_state.cancel(s, job_id))  # running: asked to stop
    assert do(factory, lambda s: job_state.release(s, job_id, 2, sent=True)) == JobStatus.canceled
    assert row(factory, job_id).status == JobStatus.canceled


def test_retry_or_give_up_backs_off_then_gives_up_after_max_attempts(settings, factory):
    job_id = submit(factory, max_attempts=2)
    assert claim(factory, settings, job_id) == 1
    now = utcnow()
    status = do(factory, lambda s: job_state.retry_or_give_up(s, settings, job_id, 1, "failed: Timeout", now=now))
    assert status == JobStatus.queued
    waiting = row(factory, job_id)
    assert waiting.failures == 1 and waiting.retry_after == now + timedelta(seconds=settings.retry_backoff_seconds)
    assert waiting.error == f"attempt 1 failed: Timeout; will retry in {settings.retry_backoff_seconds:g} s"
    assert waiting.enqueued_at is None and waiting.lease_owner is None
    assert claim(factory, settings, job_id) is None  # not before the backoff has passed
    do(factory, lambda s: s.execute(update(Job).where(Job.id == job_id).values(retry_after=now)))
    assert claim(factory, settings, job_id) == 2
    status = do(factory, lambda s: job_state.retry_or_give_up(s, settings, job_id, 2, "failed: Timeout"))
    assert status == JobStatus.failed
    failed = row(factory, job_id)
    assert failed.failures == 2 and failed.error == "gave up after 2 failed attempts: attempt 2 failed: Timeout"
    assert failed.finished_at is not None


def test_retry_or_give_up_cancels_a_job_asked_to_stop(settings, factory):
    job_id, attempt = in_state(factory, settings, "running")
    assert do(factory, lambda s: job_state.cancel(s, job_id))
    status = do(factory, lambda s: job_state.retry_or_give_up(s, settings, job_id, attempt, "failed: Timeout"))
    assert status == JobStatus.canceled and row(factory, job_id).error == job_state.CANCELED_BY_REQUEST


def test_an_expired_lease_is_a_lost_attempt_and_a_live_one_is_left_alone(settings, factory):
    job_id, attempt = in_state(factory, settings, "running")
    now = utcnow()
    with pytest.raises(LeaseLost):  # the worker still renews it
        do(factory, lambda s: job_state.expire_lease(s, settings, job_id, attempt, "w1", now))
    assert do(factory, lambda s: [r.id for r in job_state.expired_leases(s, now)]).count(job_id) == 0
    expire(factory, job_id)
    assert job_id in do(factory, lambda s: [r.id for r in job_state.expired_leases(s, utcnow())])
    status = do(factory, lambda s: job_state.expire_lease(s, settings, job_id, attempt, "w1", utcnow()))
    assert status == JobStatus.queued
    lost = row(factory, job_id)
    assert lost.failures == 1 and "lost its worker w1 (lease expired" in lost.error and "will retry" in lost.error
    with pytest.raises(LeaseLost):  # a second reaper sweeping at once counts it only once
        do(factory, lambda s: job_state.expire_lease(s, settings, job_id, attempt, "w1", utcnow()))
    assert row(factory, job_id).failures == 1


def test_cancel_is_at_once_for_a_queued_job_a_request_for_a_running_one(settings, factory):
    queued, _ = in_state(factory, settings, "queued")
    assert do(factory, lambda s: job_state.cancel(s, queued))
    canceled = row(factory, queued)
    assert canceled.status == JobStatus.canceled and canceled.cancel_requested and canceled.finished_at is not None
    assert do(factory, lambda s: job_state.cancel(s, queued))  # again: nothing changes
    running, _ = in_state(factory, settings, "running")
    assert do(factory, lambda s: job_state.cancel(s, running))
    asked = row(factory, running)
    assert asked.status == JobStatus.running and asked.cancel_requested
    assert do(factory, lambda s: job_state.cancel_requested(s, running))


def test_the_reaper_sends_a_queued_job_once(settings, factory):
    never = submit(factory, sent=False)
    now = utcnow()
    assert never in do(factory, lambda s: [r.id for r in job_state.unsent(s, now, now)])
    assert do(factory, lambda s: job_state.mark_sent(s, never, None, now))
    assert not do(factory, lambda s: job_state.mark_sent(s, never, None, now))  # someone sent it meanwhile
    assert never not in do(factory, lambda s: [r.id for r in job_state.unsent(s, now, now)])


# ---------------------------------------------------------------- forbidden


@pytest.mark.parametrize("state", ["running", "succeeded", "failed", "canceled"])
def test_only_a_queued_job_is_claimed(settings, factory, state):
    job_id, _ = in_state(factory, settings, state)
    before = snapshot(factory, job_id)
    assert claim(factory, settings, job_id, "w2") is None
    assert snapshot(factory, job_id) == before


def test_a_queued_job_asked_to_stop_is_not_claimed(settings, factory):
    job_id, attempt = in_state(factory, settings, "running")
    do(factory, lambda s: job_state.release(s, job_id, attempt, sent=True))
    do(factory, lambda s: s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True)))
    assert claim(factory, settings, job_id) is None


@pytest.mark.parametrize("state", ["queued", "succeeded", "failed", "canceled"])
def test_no_worker_write_on_a_job_that_is_not_running(settings, factory, state):
    job_id, attempt = in_state(factory, settings, state)
    before = snapshot(factory, job_id)
    for name, write in worker_writes(settings).items():
        with pytest.raises(LeaseLost):
            do(factory, lambda s, write=write: write(s, job_id, max(attempt, 1)))
        assert snapshot(factory, job_id) == before, name


def test_a_stale_attempt_writes_nothing(settings, factory):
    job_id, stale = in_state(factory, settings, "running")
    expire(factory, job_id)
    do(factory, lambda s: job_state.expire_lease(s, settings, job_id, stale, "w1", utcnow()))
    do(factory, lambda s: s.execute(update(Job).where(Job.id == job_id).values(retry_after=None)))
    assert claim(factory, settings, job_id, "w2") == stale + 1
    before = snapshot(factory, job_id)
    for name, write in worker_writes(settings).items():
        with pytest.raises(LeaseLost):
            do(factory, lambda s, write=write: write(s, job_id, stale))
        assert snapshot(factory, job_id) == before, name
    assert before["status"] == JobStatus.running and before["lease_owner"] == "w2"


def test_the_status_changes_only_through_a_transition(settings, factory):
    job_id, attempt = in_state(factory, settings, "running")
    with pytest.raises(ValueError, match="transition"):
        do(factory, lambda s: job_state.fenced_write(s, job_id, attempt, 30, status=JobStatus.succeeded))
    assert row(factory, job_id).status == JobStatus.running


@pytest.mark.parametrize("state", ["succeeded", "failed"])
def test_a_finished_job_cannot_be_canceled(settings, factory, state):
    job_id, _ = in_state(factory, settings, state)
    before = snapshot(factory, job_id)
    assert not do(factory, lambda s: job_state.cancel(s, job_id))
    with pytest.raises(Conflict) as refused, session_scope(factory) as s:  # the API's answer: 409
        cancel_job(s, cli_actor(), job_id)
    assert refused.value.status_code == 409 and f"already {state}" in str(refused.value)
    assert snapshot(factory, job_id) == before
