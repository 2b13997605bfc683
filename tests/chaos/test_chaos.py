"""Failure tests with real processes: Celery workers on a private Redis, a fresh PostgreSQL database, the
reaper; workers are SIGKILLed, SIGSTOPped, SIGTERMed; Redis restarts empty; PostgreSQL cuts every connection.
Every job must end exactly once, with each epoch recorded once; an export whose worker is killed is made again."""

from __future__ import annotations

import hashlib
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.chaos.cluster import Cluster, create_pg_database
from tests.conftest import PG_ADMIN_URL
from tests.factories import cifar_imagefolder_zip, tiny_job

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

LEASE = 4.0


@pytest.fixture(scope="module")
def chaos_db():
    url, drop = create_pg_database(PG_ADMIN_URL)
    yield url
    drop()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chaos-data") / "three.zip"
    cifar_imagefolder_zip(path, train_per_class=40, test_per_class=10)
    return path


@pytest.fixture
def cluster(tmp_path, chaos_db, archive):
    c = Cluster(tmp_path, chaos_db, lease_seconds=LEASE)
    c.start_redis()
    c.dataset_id = c.add_dataset(archive)
    yield c
    c.stop()


def body(c: Cluster, **overrides) -> dict:
    fields = {
        "model_name": f"chaos-{uuid.uuid4().hex[:6]}",
        "augmentation": "basic",
        "epochs": 4,
        "batch_size": 8,
        "val_fraction": 0.2,
        "seed": 7,
        "num_workers": 0,
        "baseline": False,
    }
    return tiny_job(c.dataset_id, **{**fields, **overrides})


def assert_each_epoch_once(c: Cluster, job_id: uuid.UUID, epochs: int) -> list[tuple[int, int, float]]:
    rows = c.epochs(job_id)
    assert [e for e, *_ in rows] == list(range(1, epochs + 1)), rows
    attempts = [a for _, a, _ in rows]
    assert attempts == sorted(attempts)  # later epochs never come from an earlier attempt
    return rows


def test_kill_9_mid_epoch_at_several_points_then_resume(cluster):
    c = cluster
    c.start_reaper()
    c.start_worker("w0")
    reference = c.submit(body(c))
    ref = c.wait_status(reference, {"succeeded"}, 180)
    per_epoch = max(0.3, sum(e.seconds for e in _epoch_rows(c, reference)) / 4)

    job_id = c.submit(body(c))
    rng = random.Random(11)
    worker, kills, resumed_after = "w0", 0, []
    for target in (1, 2):  # kill while epoch 2, then epoch 3, is in flight
        c.wait(lambda t=target: (c.job(job_id).last_epoch or 0) >= t, 120, f"epoch {target} recorded")
        time.sleep(rng.uniform(0.1, 0.8) * per_epoch)
        last = c.job(job_id).last_epoch
        c.kill(worker, signal.SIGKILL)
        kills += 1
        resumed_after.append(last)
        worker = c.start_worker()
        c.wait(lambda k=kills: c.job(job_id).attempt > k and c.job(job_id).status == "running", 60, "re-claim")
    done = c.wait_status(job_id, {"succeeded", "failed"}, 180)
    assert done.status == "succeeded", done.error
    rows = assert_each_epoch_once(c, job_id, 4)
    assert done.failures == kills and done.attempt == kills + 1
    # Each new attempt started right after the last recorded epoch: at most the killed epoch was recomputed.
    for attempt, last in enumerate(resumed_after, start=2):
        first_of_attempt = min((e for e, a, _ in rows if a == attempt), default=None)
        assert first_of_attempt in (None, last + 1)
    # Same seed, same data: the resumed run trains exactly as the uninterrupted one.
    want = c.epochs(reference)
    assert [loss for *_, loss in rows] == pytest.approx([loss for *_, loss in want], rel=1e-3)
    assert done.val_metrics["accuracy"] == pytest.approx(ref.val_metrics["accuracy"], abs=0.02)


def _epoch_rows(c: Cluster, job_id: uuid.UUID):
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import Epoch

    with session_scope(c.factory) as s:
        return s.scalars(select(Epoch).where(Epoch.job_id == job_id)).all()


def test_two_workers_on_one_job_never_both_hold_a_live_lease(cluster):
    c = cluster
    c.start_reaper()
    c.start_worker("a")
    job_id = c.submit(body(c, epochs=5))
    c.wait(lambda: c.job(job_id).status == "running", 60, "the first claim")
    c.start_worker("b")
    c.send(job_id)  # the message is redelivered while the first worker trains
    c.wait(lambda: "not claimable" in c.log("b"), 60, "the second worker to refuse the job")

    samples: list[tuple[int, object, object]] = []  # (attempt, lease expires, claimed at), every 50 ms
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                j = c.job(job_id)
                samples.append((j.attempt, j.lease_expires_at, j.started_at))
            except Exception:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    c.wait(lambda: (c.job(job_id).last_epoch or 0) >= 1, 60, "epoch 1")
    c.kill("a", signal.SIGSTOP)  # frozen, not dead: its lease runs out while it still holds the job
    c.wait(lambda: c.job(job_id).attempt == 2, 60, "the other worker to take over")
    c.kill("a", signal.SIGCONT)  # wakes up believing it still owns the job
    done = c.wait_status(job_id, {"succeeded", "failed"}, 180)
    stop.set()
    sampler.join()
    assert done.status == "succeeded", done.error
    c.wait(lambda: "lost its lease" in c.log("a"), 60, "the stale worker to notice")
    rows = assert_each_epoch_once(c, job_id, 5)
    frozen_at = max(e for e, a, _ in rows if a == 1)
    assert all(a == 2 for e, a, _ in rows if e > frozen_at)  # the loser wrote nothing after it lost
    # The lease passed from one attempt to the next only after the old one had expired.
    last_expiry: dict[int, object] = {}  # attempt -> the latest lease expiry it was seen holding
    claimed_at: dict[int, object] = {}
    for attempt, expires, claimed in samples:
        if expires is not None:
            last_expiry[attempt] = max(expires, last_expiry.get(attempt, expires))
        claimed_at.setdefault(attempt, claimed)
    assert 1 in last_expiry and 2 in claimed_at, "the sampler never saw both attempts"
    assert claimed_at[2] >= last_expiry[1], (last_expiry, claimed_at)


def test_redis_restarted_empty_while_jobs_queue_and_one_runs(cluster):
    c = cluster
    c.start_reaper()
    c.start_worker("w")
    jobs = [c.submit(body(c, epochs=2)) for _ in range(3)]
    c.wait(lambda: c.job(jobs[0]).status == "running", 60, "the first job to start")
    assert c.queue_length() >= 1
    c.restart_redis_empty()  # the queued tasks are gone (the reaper re-sends them within seconds)
    for job_id in jobs:
        done = c.wait_status(job_id, {"succeeded", "failed"}, 240)
        assert done.status == "succeeded", done.error
        assert_each_epoch_once(c, job_id, 2)
    assert "reaper: requeued 0, failed 0, canceled 0, sent" in c.log("reaper")


def test_postgresql_connections_cut_mid_run_and_the_job_completes(cluster):
    c = cluster
    c.start_reaper()
    c.start_worker("w")
    job_id = c.submit(body(c, epochs=4))
    for target in (1, 2):
        c.wait(lambda t=target: (c.job(job_id).last_epoch or 0) >= t, 120, f"epoch {target}")
        assert c.terminate_backends() >= 1  # the worker's pool, its lease thread, the reaper
    done = c.wait_status(job_id, {"succeeded", "failed"}, 180)
    assert done.status == "succeeded", done.error
    assert done.attempt == 1 and done.failures == 0  # reconnected; never lost the job
    assert_each_epoch_once(c, job_id, 4)


def test_sigterm_mid_epoch_requeues_with_the_checkpoint_and_resumes(cluster):
    c = cluster
    c.start_reaper()
    c.start_worker("w")
    job_id = c.submit(body(c, epochs=4))
    c.wait(lambda: (c.job(job_id).last_epoch or 0) >= 1, 120, "epoch 1")
    started = time.monotonic()
    c.kill("w", signal.SIGTERM)
    c.wait(lambda: not c.alive("w"), 30, "the worker to exit")
    shutdown_s = time.monotonic() - started
    job = c.job(job_id)
    assert job.status == "queued" and job.last_epoch >= 1 and job.failures == 0, (job.status, job.error)
    assert c.procs["w"].returncode == 0 and shutdown_s < 30
    assert "released on shutdown: requeued" in c.log("w")
    c.start_worker("w2")
    done = c.wait_status(job_id, {"succeeded", "failed"}, 180)
    assert done.status == "succeeded", done.error
    assert done.failures == 0 and done.attempt == 2
    assert_each_epoch_once(c, job_id, 4)


def test_a_job_that_kills_its_worker_every_time_fails_after_max_attempts(cluster):
    c = cluster
    c.start_reaper()
    job_id = c.submit(body(c, max_attempts=2))
    worker = c.start_worker(CHAOS_KILL_AT_START="1")
    deadline = time.monotonic() + 180
    while c.job(job_id).status not in ("failed", "succeeded") and time.monotonic() < deadline:
        if not c.alive(worker):  # a supervisor restarts the dead worker, which dies again
            worker = c.start_worker(CHAOS_KILL_AT_START="1")
        time.sleep(0.2)
    done = c.job(job_id)
    assert done.status == "failed" and done.failures == 2 and done.attempt == 2
    assert "gave up after 2 failed attempts" in done.error
    time.sleep(2 * c.settings.reaper_interval_seconds + 1)
    assert c.queue_length() == 0 and c.job(job_id).status == "failed"  # nothing left to retry


def test_a_corrupted_checkpoint_is_detected_and_the_previous_one_used(cluster):
    c = cluster
    c.start_reaper()
    worker = c.start_worker(CHAOS_KILL_AFTER_EPOCH="2")
    job_id = c.submit(body(c, epochs=4))
    c.wait(lambda: not c.alive(worker), 120, "the worker to die after epoch 2")
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import Checkpoint

    with session_scope(c.factory) as s:
        state_path = s.scalar(select(Checkpoint.state_path).where(Checkpoint.job_id == job_id, Checkpoint.epoch == 2))
    data = bytearray(Path(state_path).read_bytes())
    data[100:164] = bytes(64)  # a torn write
    Path(state_path).write_bytes(bytes(data))
    c.start_worker("healthy")
    done = c.wait_status(job_id, {"succeeded", "failed"}, 180)
    assert done.status == "succeeded", done.error
    rows = assert_each_epoch_once(c, job_id, 4)
    assert [(e, a) for e, a, _ in rows] == [(1, 1), (2, 2), (3, 2), (4, 2)]  # epoch 2 was trained again
    assert "does not match its recorded sha256" in c.log("healthy")


def test_kill_9_mid_export_and_a_restarted_worker_makes_it_again(cluster):
    pytest.importorskip("onnxruntime")
    c = cluster
    c.start_reaper()
    c.start_worker("stalls", CHAOS_STALL_EXPORT="1")
    job_id = c.submit(body(c, epochs=1, exports=["onnx"]))
    job = c.wait_status(job_id, {"succeeded", "failed"}, 120)
    assert job.status == "succeeded", job.error
    [export] = c.exports(job_id)  # queued when the job succeeded, sent by the worker that trained it
    c.wait(lambda: "export stalled" in c.log("stalls"), 60, "the export to be under way")
    claimed = c.export(export.id)
    assert claimed.status == "running" and claimed.attempt == 1 and claimed.lease_owner
    c.wait(
        lambda: c.export(export.id).lease_expires_at > claimed.lease_expires_at, 3 * LEASE, "the lease to be renewed"
    )
    c.kill("stalls", signal.SIGKILL)  # mid-export: the ONNX file is made, verification has not finished
    assert c.export(export.id).status == "running"  # nothing but its lease running out tells
    c.start_worker("restarted")
    made = c.wait(
        lambda: (e := c.export(export.id)).status not in ("queued", "running") and e, 120, "the export to be made"
    )
    assert made.status == "verified", made.error
    assert made.attempt == 2 and made.failures == 1 and made.error is None
    path = Path(made.path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == made.sha256 and path.stat().st_size == made.size_bytes
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # the killed attempt's leftovers are gone
    assert "exports: requeued 1, failed 0, sent 1" in c.log("reaper")
    assert f"export {export.id}: attempt 2 claimed" in c.log("restarted")
