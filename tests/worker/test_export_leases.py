"""Export durability in-process, on SQLite and PostgreSQL: the claim and its lease, renewed while the export is
made; the reaper puts back an export whose lease ran out (and re-sends it), gives up after max attempts, re-sends
a queued export whose task the broker lost; a worker that lost its lease records nothing. The same with a real
worker process that is SIGKILLed mid-export is in test_chaos.py."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

import worker.exporter as exporter
from app.db import session_scope
from app.models import Export, ExportStatus, Job, JobStatus, utcnow
from tests.factories import only
from worker.exporter import claim_export, fenced_write, run_export
from worker.reaper import Reaper


def export_row(factory, **values) -> uuid.UUID:
    """An export of a (finished) job, with values set on it."""
    with session_scope(factory) as s:
        job = Job(model_name=f"m-{uuid.uuid4().hex[:8]}", arch="resnet18", weights="none", strategy="full", config={})
        job.status = JobStatus.succeeded
        s.add(job)
        s.flush()
        export = Export(project=job.project, job_id=job.id, format="onnx", **{"status": ExportStatus.queued, **values})
        s.add(export)
        s.flush()
        return export.id


def row(factory, export_id: uuid.UUID) -> Export:
    with session_scope(factory) as s:
        export = s.get(Export, export_id)
        assert export is not None
        return export


def expire(factory, export_id: uuid.UUID) -> None:
    with session_scope(factory) as s:
        s.execute(update(Export).where(Export.id == export_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_an_export_whose_worker_died_is_requeued_and_sent_again(settings, factory):
    now = utcnow()
    dead = export_row(factory, status=ExportStatus.running, attempt=1, lease_owner="w:1", lease_expires_at=now)
    legacy = export_row(factory, status=ExportStatus.running)  # left by a worker from before export leases
    alive = export_row(factory, status=ExportStatus.running, attempt=1, lease_expires_at=now + timedelta(seconds=30))
    sent: list[uuid.UUID] = []
    reaper = Reaper(settings, factory, lambda _id: None, send_export=sent.append)
    mine = only(dead, legacy, alive)
    report = reaper.sweep(now=now + timedelta(seconds=1))
    assert sorted(mine(report.exports_requeued)) == sorted([dead, legacy])
    assert sorted(mine(report.exports_sent)) == sorted(mine(sent)) == sorted([dead, legacy])
    assert mine(report.exports_failed) == []
    requeued = row(factory, dead)
    assert requeued.status == "queued" and requeued.failures == 1 and requeued.attempt == 1
    assert requeued.lease_owner is None and requeued.lease_expires_at is None and requeued.enqueued_at is not None
    assert requeued.error == "attempt 1 lost its worker w:1 (lease expired); retrying"
    assert row(factory, alive).status == "running"  # its worker still renews it
    # Just sent: not again within the grace period (the broker holds it, or cannot be asked).
    assert mine(reaper.sweep(now=now + timedelta(seconds=2)).exports_sent) == []
    # The re-sent task claims it as the next attempt; a duplicate of that task finds it taken.
    assert claim_export(settings, factory, dead, "w:2") == 2
    assert claim_export(settings, factory, dead, "w:3") is None
    assert row(factory, dead).lease_owner == "w:2"


def test_an_export_that_keeps_killing_its_worker_fails_after_max_attempts(settings, factory):
    settings = settings.model_copy(update={"max_attempts": 2})
    now = utcnow()
    export_id = export_row(
        factory, status=ExportStatus.running, attempt=2, failures=1, lease_owner="w:9", lease_expires_at=now
    )
    sent: list[uuid.UUID] = []
    report = Reaper(settings, factory, lambda _id: None, send_export=sent.append).sweep(now=now + timedelta(seconds=1))
    assert only(export_id)(report.exports_failed) == [export_id]
    assert only(export_id)(report.exports_requeued) == only(export_id)(sent) == []
    failed = row(factory, export_id)
    assert failed.status == "failed" and failed.failures == 2 and failed.finished_at is not None
    assert failed.error.startswith("gave up after 2 failed attempts: attempt 2 lost its worker w:9 (lease expired)")
    assert claim_export(settings, factory, export_id, "w:10") is None  # nothing left to make


def test_a_queued_export_whose_task_the_broker_lost_is_sent_again(settings, factory):
    grace = settings.requeue_grace_seconds
    now = utcnow()
    lost = export_row(factory, enqueued_at=now - timedelta(seconds=grace + 1))
    fresh = export_row(factory, enqueued_at=now)  # just sent: its worker may be about to claim it
    never = export_row(factory, enqueued_at=None)  # queued without a sender (a job's exports on a bare runner)
    held: set[str] | None = {str(lost)}
    sent: list[uuid.UUID] = []
    reaper = Reaper(settings, factory, lambda _id: None, probe=lambda: held, send_export=sent.append)
    mine = only(lost, fresh, never)
    assert mine(reaper.sweep(now=now).exports_sent) == [never]  # the broker holds `lost`'s task
    held = None  # the broker cannot be asked: only what was never sent is sent
    assert mine(reaper.sweep(now=now).exports_sent) == []
    held = set()  # Redis restarted empty
    assert mine(reaper.sweep(now=now).exports_sent) == [lost] and mine(sent) == [never, lost]
    assert mine(reaper.sweep(now=now).exports_sent) == []  # just sent again: not twice
    # Without an export sender (the training-only reapers of older tests), exports are left be.
    assert Reaper(settings, factory, lambda _id: None).sweep(now=now + timedelta(hours=1)).exports_sent == []


def test_a_worker_that_lost_its_lease_cannot_record_its_export(settings, factory):
    export_id = export_row(factory)
    assert claim_export(settings, factory, export_id, "stale") == 1
    assert fenced_write(settings, factory, export_id, 1)  # renewed while it holds the lease
    expire(factory, export_id)  # frozen (SIGSTOP, a long GC pause): its lease runs out
    sent: list[uuid.UUID] = []
    reaper = Reaper(settings, factory, lambda _id: None, send_export=sent.append)
    assert only(export_id)(reaper.sweep().exports_requeued) == [export_id]
    assert claim_export(settings, factory, export_id, "new") == 2
    verified = {"status": ExportStatus.verified, "path": "/nowhere", "sha256": "0" * 64, "lease_expires_at": None}
    assert not fenced_write(settings, factory, export_id, 1, **verified)  # the stale worker wakes up: refused
    assert not fenced_write(settings, factory, export_id, 1)  # nor may it renew
    now = row(factory, export_id)
    assert now.status == "running" and now.attempt == 2 and now.lease_owner == "new" and now.path is None
    assert fenced_write(settings, factory, export_id, 2, **verified)
    assert row(factory, export_id).status == "verified"


def fake_make(folder: Path, during=None):
    """Stands in for the ONNX work: runs `during` (what happens meanwhile), then leaves the attempt's file."""

    def make(settings, factory, export_id, attempt, keeper):
        if during is not None:
            during(factory, export_id, attempt)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"model-a{attempt}.onnx"
        path.write_bytes(b"onnx")
        return {"status": ExportStatus.verified, "path": str(path), "sha256": "0" * 64, "size_bytes": 4}

    return make


def test_run_export_renews_its_lease_while_it_works_and_keeps_only_its_file(settings, factory, monkeypatch, tmp_path):
    settings = settings.model_copy(update={"lease_seconds": 0.8})
    export_id = export_row(factory)
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "model-a0.onnx").write_bytes(b"a dead attempt's file")
    (folder / ".onnx-a0-tmpdir").mkdir()
    (folder / "model-a0.int8.onnx").write_bytes(b"another format's file")

    def outlive_the_lease(factory, export_id, attempt):
        first = row(factory, export_id).lease_expires_at
        deadline = time.monotonic() + 10
        while row(factory, export_id).lease_expires_at <= first:  # renewed by the lease thread
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.05)

    monkeypatch.setattr(exporter, "_make", fake_make(folder, outlive_the_lease))
    assert run_export(settings, factory, export_id, owner="w") == "verified"
    done = row(factory, export_id)
    assert done.status == "verified" and done.attempt == 1 and done.lease_expires_at is None
    assert done.lease_owner is None and done.finished_at is not None
    assert sorted(p.name for p in folder.iterdir()) == ["model-a0.int8.onnx", "model-a1.onnx"]


def test_run_export_that_lost_its_lease_writes_nothing(settings, factory, monkeypatch, tmp_path):
    export_id = export_row(factory)

    def taken_over(factory, export_id, attempt):
        expire(factory, export_id)
        Reaper(settings, factory, lambda _id: None, send_export=lambda _id: None).sweep()
        assert claim_export(settings, factory, export_id, "other") == attempt + 1

    folder = tmp_path / "exports"
    monkeypatch.setattr(exporter, "_make", fake_make(folder, taken_over))
    assert run_export(settings, factory, export_id, owner="stale") == "lease-lost"
    now = row(factory, export_id)
    assert now.status == "running" and now.attempt == 2 and now.lease_owner == "other" and now.path is None
    assert list(folder.iterdir()) == []  # its own file is removed; the newer attempt's is never touched
