"""The best checkpoint's per-image validation predictions, recorded by real tiny training runs (fine-tuning and
cached features), read through GET /jobs/{id}/confusion: they add up to the stored confusion matrix, name the
dataset's own images, are written once even across a resume, and go with the job or the dataset."""

from __future__ import annotations

import uuid
from collections import Counter

import numpy as np
import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.ml.trainer import ValPredictions
from app.models import ValPrediction
from app.services import predictions
from tests.factories import color_images_zip, tiny_job
from tests.worker.test_durability import CrashAfter, SimulatedCrash, reap_and_release
from worker.runner import JobRunner

# The recording run on both databases; the rest (same SQL, slower training) on SQLite.
ON_BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
ON_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def submit(client, dataset_id: str, **fields) -> str:
    body = tiny_job(dataset_id, **{"epochs": 1, "batch_size": 12, "val_fraction": 0.25, "seed": 5, **fields})
    r = client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def stored(factory, job_id: str) -> list[tuple[int, int, int, float]]:
    with session_scope(factory) as s:
        rows = s.execute(
            select(ValPrediction.ref, ValPrediction.true_class, ValPrediction.predicted_class, ValPrediction.confidence)
            .where(ValPrediction.job_id == uuid.UUID(job_id))
            .order_by(ValPrediction.ref)
        ).all()
    return [tuple(r) for r in rows]


def dataset_labels(client, dataset_id: str) -> dict[int, int]:
    """ref -> class index of every image, through GET /datasets/{id}/samples (all of each class, every split)."""
    labels = {}
    for split in client.get(f"/datasets/{dataset_id}").json()["split_counts"]:
        r = client.get(f"/datasets/{dataset_id}/samples", params={"per_class": 16, "split": split})
        assert r.status_code == 200, r.text
        classes = r.json()["classes"]
        assert all(c["count"] <= 16 for c in classes)  # so the samples are every image of the class
        labels |= {ref: c["index"] for c in classes for ref in c["samples"]}
    return labels


def check_against_confusion_matrix(client, factory, job_id: str, dataset_id: str) -> None:
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    matrix = job["val_metrics"]["confusion_matrix"]
    rows = stored(factory, job_id)
    assert len(rows) == job["val_metrics"]["count"] == len({r for r, *_ in rows})
    pairs = Counter((t, p) for _, t, p, _ in rows)
    n = len(matrix)
    assert {(t, p): matrix[t][p] for t in range(n) for p in range(n) if matrix[t][p]} == dict(pairs)
    labels = dataset_labels(client, dataset_id)
    assert all(labels[ref] == t for ref, t, _, _ in rows)  # each ref is that dataset image, of that class
    assert all(0 < c <= 1 for *_, c in rows)

    for t in range(n):
        for p in range(n):
            r = client.get(f"/jobs/{job_id}/confusion", params={"true": t, "predicted": p, "limit": 200})
            assert r.status_code == 200, r.text
            cell = r.json()
            assert cell["job_id"] == job_id and cell["dataset_id"] == dataset_id
            assert cell["true"] == {"index": t, "name": list(job["val_metrics"]["per_class"])[t]}
            assert cell["predicted"]["index"] == p and cell["total"] == matrix[t][p] == len(cell["items"])
            want = sorted(((c, r) for r, tt, pp, c in rows if (tt, pp) == (t, p)), key=lambda x: (-x[0], x[1]))
            assert [i["ref"] for i in cell["items"]] == [r for _, r in want]  # most confident first
            assert [i["confidence"] for i in cell["items"]] == pytest.approx([c for c, _ in want])


@ON_BOTH
@pytest.mark.parametrize("strategy", ["full", "linear"])
def test_a_finished_job_stores_one_prediction_per_val_image(client, settings, factory, enqueued, dataset_id, strategy):
    job_id = submit(client, dataset_id, strategy=strategy, augmentation="basic" if strategy == "full" else "none")
    r = client.get(f"/jobs/{job_id}/confusion", params={"true": 0, "predicted": 0})
    assert r.status_code == 409 and r.json()["error"]["code"] == "predictions_unavailable"
    assert "queued" in r.json()["error"]["message"]
    assert JobRunner(settings, factory).run(uuid.UUID(job_id)) == "succeeded"
    check_against_confusion_matrix(client, factory, job_id, dataset_id)

    page = client.get(f"/jobs/{job_id}/confusion", params={"true": 0, "predicted": 0, "limit": 2, "offset": 1})
    full = client.get(f"/jobs/{job_id}/confusion", params={"true": 0, "predicted": 0}).json()
    assert page.json()["items"] == full["items"][1:3] and page.json()["total"] == full["total"]
    for params in ({"true": 3, "predicted": 0}, {"true": 0, "predicted": 9}, {"true": -1, "predicted": 0}, {}):
        r = client.get(f"/jobs/{job_id}/confusion", params=params)
        assert r.status_code == 422 and r.json()["error"]["code"], r.text
    assert client.get(f"/jobs/{job_id}/confusion", params={"true": 0, "predicted": 0, "limit": 0}).status_code == 422

    r = client.post("/keys", json={"name": "other", "scopes": ["read"], "project": f"other-{uuid.uuid4().hex[:8]}"})
    other = {"Authorization": f"Bearer {r.json()['key']}"}
    r = client.get(f"/jobs/{job_id}/confusion", params={"true": 0, "predicted": 0}, headers=other)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get(f"/jobs/{uuid.uuid4()}/confusion", params={"true": 0, "predicted": 0}).status_code == 404


@ON_SQLITE
def test_a_datasets_own_val_split_is_what_is_recorded(client, settings, factory, tmp_path):
    layout = {"train/green": 8, "train/red": 8, "val/green": 3, "val/red": 3, "test/green": 2, "test/red": 2}
    path = color_images_zip(tmp_path / "splits.zip", layout, size=16)
    r = client.post("/datasets", files={"file": ("splits.zip", path.read_bytes())})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    job_id = submit(client, dataset_id, strategy="linear", augmentation="none")
    assert JobRunner(settings, factory).run(uuid.UUID(job_id)) == "succeeded"
    check_against_confusion_matrix(client, factory, job_id, dataset_id)
    assert [ref for ref, *_ in stored(factory, job_id)] == list(range(16, 22))  # val follows train's 16 images


@ON_SQLITE
def test_a_resumed_job_writes_its_predictions_once(client, settings, factory, dataset_id):
    job_id = submit(client, dataset_id, epochs=2)
    with pytest.raises(SimulatedCrash):
        CrashAfter(settings, factory, after=1).run(uuid.UUID(job_id))
    assert stored(factory, job_id) == []  # nothing before the job succeeds
    reap_and_release(settings, factory, uuid.UUID(job_id))
    assert JobRunner(settings, factory).run(uuid.UUID(job_id)) == "succeeded"
    assert client.get(f"/jobs/{job_id}").json()["attempt"] == 2
    check_against_confusion_matrix(client, factory, job_id, dataset_id)

    # The worker's unit of work is tried again after a dropped connection: writing the same rows again replaces
    # them, never adds to them.
    rows = stored(factory, job_id)
    columns = [np.asarray(column) for column in zip(*rows, strict=True)]
    with session_scope(factory) as s:
        predictions.record(s, uuid.UUID(job_id), ValPredictions(*columns))
    assert stored(factory, job_id) == rows


@ON_SQLITE
def test_predictions_go_with_the_job_and_with_the_dataset(client, settings, factory, dataset_id):
    first, second = (submit(client, dataset_id, strategy="linear", augmentation="none") for _ in range(2))
    for job_id in (first, second):
        assert JobRunner(settings, factory).run(uuid.UUID(job_id)) == "succeeded"
        assert stored(factory, job_id)

    assert client.delete(f"/jobs/{first}").status_code == 204
    assert stored(factory, first) == []

    assert client.delete(f"/datasets/{dataset_id}").status_code == 204
    assert stored(factory, second) == []
    r = client.get(f"/jobs/{second}/confusion", params={"true": 0, "predicted": 0})
    assert r.status_code == 409 and "dataset was deleted" in r.json()["error"]["message"]
    with session_scope(factory) as s:
        ids = [uuid.UUID(first), uuid.UUID(second)]
        assert s.scalar(select(func.count()).select_from(ValPrediction).where(ValPrediction.job_id.in_(ids))) == 0
