"""The checkpoint store on its own, on SQLite and PostgreSQL, with tiny tensors: names, retention (the best and
the last two serving files, the last two training states), resume from the newest state that matches its sha256
(the epochs after it forgotten, under the fence), and a pruned best written again."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import select, update

from app import job_state
from app.db import session_scope
from app.job_state import LeaseLost
from app.models import Checkpoint, Epoch, Job, utcnow
from worker.checkpoints import CheckpointStore


def claimed_job(factory, settings) -> uuid.UUID:
    with session_scope(factory) as s:
        job = Job(model_name=f"m-{uuid.uuid4().hex[:8]}", arch="resnet18", weights="none", strategy="full", config={})
        job_id = job_state.submit(s, job).id
    with session_scope(factory) as s:
        assert job_state.claim(s, job_id, "w1", settings.lease_seconds) == 1
    return job_id


def next_attempt(factory, settings, job_id: uuid.UUID, attempt: int) -> int:
    """The worker died: the reaper counts the attempt, the backoff is skipped, another worker claims the job."""
    with session_scope(factory) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with session_scope(factory) as s:
        job_state.expire_lease(s, settings, job_id, attempt, "w1", utcnow())
        s.execute(update(Job).where(Job.id == job_id).values(retry_after=None))
    with session_scope(factory) as s:
        new = job_state.claim(s, job_id, "w2", settings.lease_seconds)
    assert new == attempt + 1
    return new


def record(store: CheckpointStore, settings, epoch: int, best_epoch: int) -> None:
    """What the runner does for an epoch: files, then the fenced rows, then the files retention let go."""
    weights = {"w": torch.full((4,), float(epoch))}
    state = {"epoch": epoch, "step": 10 * epoch, "best_epoch": best_epoch, "model": weights}
    saved = store.save(epoch, weights, {"epoch": epoch}, state)
    with session_scope(store.factory) as s:
        job_state.fenced_write(s, store.job_id, store.attempt, settings.lease_seconds, last_epoch=epoch)
        s.add(
            Epoch(
                job_id=store.job_id,
                epoch=epoch,
                attempt=store.attempt,
                train_loss=1.0 / epoch,
                train_accuracy=0.5,
                learning_rate=0.1,
                seconds=1.0,
                images_per_second=1.0,
            )
        )
        stale = store.record(s, saved, val_accuracy=0.1 * epoch, is_best=epoch == best_epoch)
    store.discard(stale)


def rows(factory, job_id: uuid.UUID) -> dict[int, Checkpoint]:
    with session_scope(factory) as s:
        return {c.epoch: c for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))}


def epochs(factory, job_id: uuid.UUID) -> list[int]:
    with session_scope(factory) as s:
        return list(s.scalars(select(Epoch.epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)))


def test_retention_keeps_the_best_and_the_last_two(settings, factory, tmp_path):
    job_id = claimed_job(factory, settings)
    store = CheckpointStore(tmp_path / "ckpt", factory, job_id, 1, settings.lease_seconds)
    for epoch in range(1, 5):
        record(store, settings, epoch, best_epoch=1)
    folder = tmp_path.resolve() / "ckpt" / str(job_id)
    assert store.weights_path(4) == folder / "a1-e0004.safetensors"
    assert sorted(p.name for p in folder.iterdir()) == [
        "a1-e0001.safetensors",  # the best
        "a1-e0003.safetensors",
        "a1-e0003.state.pt",
        "a1-e0004.safetensors",
        "a1-e0004.state.pt",
    ]
    found = rows(factory, job_id)
    assert [e for e, c in sorted(found.items()) if c.pruned] == [2]
    assert [e for e, c in sorted(found.items()) if c.state_path] == [3, 4]
    assert [e for e, c in found.items() if c.is_best] == [1]
    latest = found[4]
    assert hashlib.sha256(Path(latest.path).read_bytes()).hexdigest() == latest.sha256


def test_resume_falls_back_past_a_corrupted_state_and_forgets_the_epochs_after_it(settings, factory, tmp_path):
    job_id = claimed_job(factory, settings)
    first = CheckpointStore(tmp_path, factory, job_id, 1, settings.lease_seconds)
    for epoch in range(1, 5):
        record(first, settings, epoch, best_epoch=min(epoch, 3))
    newest = Path(rows(factory, job_id)[4].state_path)
    newest.write_bytes(newest.read_bytes()[:-1] + b"!")  # one byte changed on disk
    attempt = next_attempt(factory, settings, job_id, 1)
    state = CheckpointStore(tmp_path, factory, job_id, attempt, settings.lease_seconds).resume()
    assert state is not None and state["epoch"] == 3 and state["step"] == 30
    assert torch.equal(state["model"]["w"], torch.full((4,), 3.0))
    assert sorted(rows(factory, job_id)) == [1, 2, 3] and epochs(factory, job_id) == [1, 2, 3]
    assert not newest.exists() and not Path(first.weights_path(4)).exists()
    assert [e for e, c in rows(factory, job_id).items() if c.is_best] == [3]
    with session_scope(factory) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.last_epoch == 3 and job.last_step == 30
    # The stale attempt cannot resume (it would delete the new attempt's rows): refused by the fence.
    with pytest.raises(LeaseLost):
        first.resume()


def test_a_fresh_job_has_nothing_to_resume(settings, factory, tmp_path):
    job_id = claimed_job(factory, settings)
    assert CheckpointStore(tmp_path, factory, job_id, 1, settings.lease_seconds).resume() is None


def test_a_pruned_best_is_written_again_from_the_model(settings, factory, tmp_path):
    job_id = claimed_job(factory, settings)
    store = CheckpointStore(tmp_path, factory, job_id, 1, settings.lease_seconds)
    for epoch in range(1, 4):
        record(store, settings, epoch, best_epoch=1)
    Path(rows(factory, job_id)[1].path).unlink()  # gone, as when a resume fell back past its successor
    weights = {"w": torch.full((4,), 1.0)}
    with session_scope(factory) as s:
        best = store.best(s, lambda: weights, lambda epoch, acc: {"epoch": epoch, "val_accuracy": acc})
    assert best.epoch == 1 and Path(best.path) == store.best_path(1) and not best.pruned
    assert Path(best.path).name == "a1-e0001-best.safetensors"
    assert hashlib.sha256(Path(best.path).read_bytes()).hexdigest() == rows(factory, job_id)[1].sha256
    with session_scope(factory) as s:  # present: left as it is
        again = store.best(s, lambda: pytest.fail("written twice"), lambda e, a: {})
    assert again.path == best.path
