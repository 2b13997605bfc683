"""Durability in-process, on SQLite and PostgreSQL: exact resume, corrupted checkpoints, the reaper's bounded
retries and re-sends, graceful release, transient versus permanent errors, cancel in every state, and
idempotent submission. The same failures with real processes are in test_chaos.py."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from app import job_state
from app.db import session_scope
from app.job_state import LeaseLost
from app.models import Checkpoint, Epoch, Job, utcnow
from app.queue import redis_probe
from tests.factories import only, tiny_job
from worker import shutdown
from worker.reaper import Reaper
from worker.runner import JobRunner


class SimulatedCrash(BaseException):
    """Stands for SIGKILL: nothing in the runner catches it, so the job is left running with its lease."""


class CrashAfter(JobRunner):
    """A runner whose process 'dies' right after epoch `after` is recorded (or asks to shut down instead)."""

    def __init__(self, *args, after: int, graceful: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.after, self.graceful = after, graceful

    def record_epoch(self, hooks, report, built, state) -> None:
        super().record_epoch(hooks, report, built, state)
        if report.epoch == self.after:
            if self.graceful:
                shutdown.request()  # what SIGTERM does in a Celery worker
            else:
                raise SimulatedCrash


def job_body(dataset_id: str, **overrides) -> dict:
    fields = {"augmentation": "basic", "epochs": 4, "batch_size": 8, "val_fraction": 0.25, "seed": 3}
    return tiny_job(dataset_id, **{**fields, **overrides})


def submit(client, body: dict, **headers: str) -> uuid.UUID:
    r = client.post("/jobs", json=body, headers=headers)
    assert r.status_code == 202, r.text
    return uuid.UUID(r.json()["id"])


def reap_and_release(settings, factory, job_id: uuid.UUID) -> None:
    """The worker is dead: its lease runs out, the reaper puts the job back, the backoff passes."""
    with session_scope(factory) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    report = Reaper(settings, factory, lambda _id: None).sweep()
    assert only(job_id)(report.requeued) == [job_id]
    with session_scope(factory) as s:
        s.execute(update(Job).where(Job.id == job_id).values(retry_after=None))


def history(factory, job_id: uuid.UUID) -> list[tuple[int, int, float]]:
    with session_scope(factory) as s:
        rows = s.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)).all()
        return [(e.epoch, e.attempt, e.train_loss) for e in rows]


@pytest.mark.parametrize("strategy", ["full", "linear"])
def test_a_killed_job_resumes_after_its_last_epoch_and_matches_an_uninterrupted_run(
    client, settings, factory, enqueued, dataset_id, strategy
):
    body = job_body(dataset_id, strategy=strategy, augmentation="basic" if strategy == "full" else "none")
    reference = submit(client, body)
    assert JobRunner(settings, factory).run(reference) == "succeeded"

    job_id = submit(client, body)
    with pytest.raises(SimulatedCrash):
        CrashAfter(settings, factory, after=2).run(job_id)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "running" and job["last_epoch"] == 2 and job["attempt"] == 1
    reap_and_release(settings, factory, job_id)
    assert JobRunner(settings, factory).run(job_id) == "succeeded"

    got, want = history(factory, job_id), history(factory, reference)
    assert [(e, a) for e, a, _ in got] == [(1, 1), (2, 1), (3, 2), (4, 2)]  # each epoch once, none recomputed
    assert [loss for *_, loss in got] == pytest.approx([loss for *_, loss in want], rel=1e-4)
    done, ref = client.get(f"/jobs/{job_id}").json(), client.get(f"/jobs/{reference}").json()
    assert done["failures"] == 1 and done["attempt"] == 2
    assert done["val_metrics"]["accuracy"] == pytest.approx(ref["val_metrics"]["accuracy"])
    assert done["best_epoch"] == ref["best_epoch"]
    assert done["best_checkpoint"]["epoch"] == ref["best_checkpoint"]["epoch"]


def test_a_corrupted_latest_state_is_detected_and_the_one_before_is_used(client, settings, factory, dataset_id):
    body = job_body(dataset_id)
    reference = submit(client, body)
    assert JobRunner(settings, factory).run(reference) == "succeeded"
    job_id = submit(client, body)
    with pytest.raises(SimulatedCrash):
        CrashAfter(settings, factory, after=3).run(job_id)
    with session_scope(factory) as s:
        latest = s.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.epoch == 3))
        states = s.scalars(select(Checkpoint.state_path).where(Checkpoint.job_id == job_id)).all()
    assert len([p for p in states if p]) == 2  # the last two training states are kept
    data = bytearray(Path(latest.state_path).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    Path(latest.state_path).write_bytes(bytes(data))

    reap_and_release(settings, factory, job_id)
    assert JobRunner(settings, factory).run(job_id) == "succeeded"
    got = history(factory, job_id)
    assert [(e, a) for e, a, _ in got] == [(1, 1), (2, 1), (3, 2), (4, 2)]  # epoch 3 recomputed, recorded once
    assert [loss for *_, loss in got] == pytest.approx([loss for *_, loss in history(factory, reference)], rel=1e-4)
    assert not Path(latest.state_path).exists()


def test_sigterm_releases_the_job_to_the_queue_and_it_resumes(client, settings, factory, dataset_id):
    job_id = submit(client, job_body(dataset_id, epochs=3))
    sent: list[uuid.UUID] = []
    try:
        outcome = CrashAfter(settings, factory, after=1, graceful=True, enqueue=sent.append).run(job_id)
    finally:
        shutdown.clear()
    assert outcome == "requeued" and sent == [job_id]
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["last_epoch"] == 1 and job["failures"] == 0  # not a failure
    assert job["best_checkpoint"]["epoch"] == 1
    assert JobRunner(settings, factory).run(job_id) == "succeeded"
    assert [(e, a) for e, a, _ in history(factory, job_id)] == [(1, 1), (2, 2), (3, 2)]


def test_a_stale_attempt_cannot_write_anything(client, settings, factory, dataset_id):
    job_id = submit(client, job_body(dataset_id))
    runner = JobRunner(settings, factory)
    first = runner.claim(job_id)
    reap_and_release(settings, factory, job_id)
    second = runner.claim(job_id)
    assert (first, second) == (1, 2)
    assert runner.release(job_id, first) == "lease-lost"
    runner.finish(job_id, first, "failed", error="stale")  # logged and dropped
    with pytest.raises(LeaseLost), session_scope(factory) as s:
        job_state.fenced_write(s, job_id, first, settings.lease_seconds, last_epoch=9)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "running" and job["error"] != "stale" and job["last_epoch"] is None


def test_a_job_that_keeps_killing_its_worker_fails_after_max_attempts(client, settings, factory, dataset_id):
    job_id = submit(client, job_body(dataset_id, max_attempts=2))
    runner = JobRunner(settings, factory)
    assert runner.claim(job_id) == 1
    reap_and_release(settings, factory, job_id)
    assert runner.claim(job_id) == 2
    with session_scope(factory) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    sent: list[uuid.UUID] = []
    report = Reaper(settings, factory, sent.append).sweep()
    assert only(job_id)(report.failed) == [job_id] and only(job_id)(sent) == []
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["failures"] == 2
    assert "gave up after 2 failed attempts" in job["error"] and "lease expired" in job["error"]
    assert runner.claim(job_id) is None


def test_backoff_doubles_and_the_reaper_sends_a_retry_only_when_it_is_due(client, settings, factory, dataset_id):
    job_id = submit(client, job_body(dataset_id, max_attempts=5))
    runner, sent = JobRunner(settings, factory), []
    reaper = Reaper(settings, factory, sent.append)
    waits = []
    mine = only(job_id)
    for attempt in (1, 2):
        assert runner.claim(job_id) == attempt
        now = utcnow() + timedelta(hours=attempt)
        with session_scope(factory) as s:
            s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=now - timedelta(seconds=1)))
        assert mine(reaper.sweep(now=now).requeued) == [job_id] and mine(sent) == []
        with session_scope(factory) as s:
            job = s.get(Job, job_id)
            waits.append((job.retry_after - now).total_seconds())
        assert mine(reaper.sweep(now=now + timedelta(seconds=waits[-1] - 1)).sent) == []
        assert mine(reaper.sweep(now=now + timedelta(seconds=waits[-1])).sent) == [job_id]
        sent.clear()
        with session_scope(factory) as s:
            s.execute(update(Job).where(Job.id == job_id).values(retry_after=None))
    assert waits == [settings.retry_backoff_seconds, 2 * settings.retry_backoff_seconds]


def test_transient_errors_retry_and_permanent_errors_fail_at_once(client, settings, factory, dataset_id, monkeypatch):
    import worker.runner as runner_module

    def database_gone(*_a, **_k):
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(runner_module, "fit", database_gone)
    transient = submit(client, job_body(dataset_id))
    assert JobRunner(settings, factory).run(transient) == "retrying"
    job = client.get(f"/jobs/{transient}").json()
    assert job["status"] == "queued" and job["failures"] == 1 and job["retry_after"] is not None
    assert "will retry" in job["error"] and "connection refused" in job["error"]

    def bad_config(*_a, **_k):
        raise ValueError("the strategy leaves no trainable parameters")

    monkeypatch.setattr(runner_module, "fit", bad_config)
    permanent = submit(client, job_body(dataset_id))
    assert JobRunner(settings, factory).run(permanent) == "failed"
    job = client.get(f"/jobs/{permanent}").json()
    assert job["status"] == "failed" and job["failures"] == 0 and "no trainable parameters" in job["error"]


def test_cancel_works_in_every_state_and_a_retry_never_undoes_it(client, settings, factory, dataset_id):
    runner = JobRunner(settings, factory)
    # Waiting between retries: canceled at once, and never claimed again.
    waiting = submit(client, job_body(dataset_id))
    runner.claim(waiting)
    reap_and_release(settings, factory, waiting)
    assert client.post(f"/jobs/{waiting}/cancel").json()["status"] == "canceled"
    assert runner.claim(waiting) is None
    # Running on a worker that then dies: the reaper cancels it instead of retrying it.
    dead = submit(client, job_body(dataset_id))
    runner.claim(dead)
    r = client.post(f"/jobs/{dead}/cancel").json()
    assert r["status"] == "running" and r["cancel_requested"] is True
    with session_scope(factory) as s:
        s.execute(update(Job).where(Job.id == dead).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert only(dead)(Reaper(settings, factory, lambda _id: None).sweep().canceled) == [dead]
    assert client.get(f"/jobs/{dead}").json()["status"] == "canceled"
    # Asked to stop while a worker shuts down: canceled, not requeued.
    leaving = submit(client, job_body(dataset_id))
    attempt = runner.claim(leaving)
    client.post(f"/jobs/{leaving}/cancel")
    assert runner.release(leaving, attempt) == "canceled"


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(client, enqueued, dataset_id):
    body = job_body(dataset_id)
    first = client.post("/jobs", json=body, headers={"Idempotency-Key": "order-42"})
    again = client.post("/jobs", json=body, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and enqueued == [uuid.UUID(first.json()["id"])]
    other = client.post("/jobs", json={**body, "epochs": 9}, headers={"Idempotency-Key": "order-42"})
    assert other.status_code == 409 and "different request body" in other.json()["error"]["message"]
    fresh = client.post("/jobs", json=body, headers={"Idempotency-Key": "order-43"})
    assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]
    unkeyed = [client.post("/jobs", json=body).json()["id"] for _ in range(2)]
    assert len(set(unkeyed)) == 2
    too_long = client.post("/jobs", json=body, headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 422 and "Idempotency-Key" in too_long.json()["error"]["message"]


def test_the_reaper_resends_only_what_the_real_redis_queue_lost(client, settings, factory, dataset_id):
    from app.queue import make_celery, redis_queue_keys, send_train_task

    job_id = submit(client, job_body(dataset_id))
    celery = make_celery(settings)
    send_train_task(celery, settings, job_id)  # the task really is in Redis
    probe = redis_probe(settings.broker_url, settings.queue, settings.requeue_grace_seconds)
    sent: list[uuid.UUID] = []
    reaper = Reaper(settings, factory, sent.append, probe)
    later = utcnow() + timedelta(seconds=settings.requeue_grace_seconds + 1)
    mine = only(job_id)
    assert str(job_id) in (probe() or set())
    assert mine(reaper.sweep(now=later).sent) == []  # Redis holds it: nothing to do
    import redis

    redis.Redis.from_url(settings.broker_url).delete(*redis_queue_keys(settings.queue))  # Redis restarted empty
    assert mine(reaper.sweep(now=later).sent) == [job_id] and mine(sent) == [job_id]
    assert mine(reaper.sweep(now=later).sent) == []  # just sent: not again within the grace period
    with session_scope(factory) as s:
        assert s.get(Job, job_id).enqueued_at is not None


def test_resent_tasks_are_served_before_new_submissions(settings):
    """A job resuming after its worker died (or re-sent after Redis lost it) does not wait behind the queue."""
    from app.queue import make_celery, send_train_task

    celery = make_celery(settings)
    new = [uuid.uuid4() for _ in range(3)]
    resumed = uuid.uuid4()
    for job_id in new:
        send_train_task(celery, settings, job_id)
    send_train_task(celery, settings, resumed, resent=True)
    served = []
    with celery.connection_for_read() as conn:
        channel = conn.default_channel
        while (message := channel.basic_get(settings.queue, no_ack=True)) is not None:
            served.append(uuid.UUID(message.decode()[0][0]))
    assert served == [resumed, *new]


def test_a_task_whose_worker_died_before_claiming_is_sent_again(client, settings, factory, dataset_id):
    """kill -9 between delivery and claim leaves the message unacknowledged in Redis for the visibility timeout
    (hours); the reaper must not wait for it."""
    import subprocess
    import sys
    import time

    from app.queue import make_celery, send_train_task

    job_id = submit(client, job_body(dataset_id))
    send_train_task(make_celery(settings), settings, job_id)
    taker = (
        "import os, signal; from app.config import Settings; from app.queue import make_celery\n"
        f"s = Settings(broker_url={settings.broker_url!r}, queue={settings.queue!r})\n"
        "conn = make_celery(s).connection_for_read(); m = conn.default_channel.basic_get(s.queue)\n"
        "assert m is not None; os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    died = subprocess.run([sys.executable, "-c", taker], cwd=Path(__file__).resolve().parents[2], check=False)
    assert died.returncode == -9
    later = utcnow() + timedelta(seconds=settings.requeue_grace_seconds + 1)
    fresh = Reaper(settings, factory, [].append, redis_probe(settings.broker_url, settings.queue, 60.0))
    assert only(job_id)(fresh.sweep(now=later).sent) == []  # just delivered: its worker may be claiming it
    time.sleep(1.1)
    sent: list[uuid.UUID] = []
    stale = Reaper(settings, factory, sent.append, redis_probe(settings.broker_url, settings.queue, 1.0))
    assert only(job_id)(stale.sweep(now=later).sent) == [job_id] and only(job_id)(sent) == [job_id]
