"""Each strategy trains through the runner on real shipped weights and its checkpoint serves /predict."""

from __future__ import annotations

import io
import uuid

import pytest
from fastapi.testclient import TestClient

from app.auth import new_key
from app.config import Settings
from app.main import create_app
from app.migrate import upgrade
from tests.factories import cifar_imagefolder_zip
from tests.worker.test_runner import run_enqueued, upload


@pytest.fixture(scope="module")
def sqlite_service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strategies")
    settings = Settings(data_dir=tmp / "data", database_url=f"sqlite:///{tmp / 'db.sqlite'}", admin_key=new_key())
    upgrade(settings.resolved_database_url())
    enqueued: list[uuid.UUID] = []
    data = cifar_imagefolder_zip(tmp / "ds.zip", train_per_class=16)
    auth = {"Authorization": f"Bearer {settings.admin_key}"}
    with TestClient(create_app(settings, enqueue=enqueued.append), headers=auth) as client:
        dataset = upload(client, tmp / "ds.zip")
        yield client, settings, enqueued, dataset["id"], data["heldout"][:6]


@pytest.mark.parametrize(
    "knobs",
    [
        {"strategy": "linear"},
        {"strategy": "partial", "unfreeze_stages": 2, "augmentation": "randaugment"},
        {"strategy": "full", "optimizer": "sgd", "schedule": "onecycle", "label_smoothing": 0.1, "grad_clip": 1.0},
        {"strategy": "lora", "lora_rank": 4, "mixup_prob": 0.5},
    ],
    ids=lambda k: k["strategy"],
)
def test_strategy_trains_and_serves(sqlite_service, knobs):
    client, settings, enqueued, dataset_id, heldout = sqlite_service
    name = f"{knobs['strategy']}-{uuid.uuid4().hex[:6]}"
    body = {
        "dataset_id": dataset_id,
        "model_name": name,
        "arch": "efficientnet_lite0",
        "epochs": 1,
        "image_size": 32,
        "batch_size": 16,
        "baseline": False,
        **knobs,
    }
    r = client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    assert run_enqueued(settings, enqueued) == ["succeeded"]
    job = client.get(f"/jobs/{r.json()['id']}").json()
    assert job["status"] == "succeeded" and job["config"]["strategy"] == knobs["strategy"]
    files = [("files", (f"{i}.png", io.BytesIO(img), "image/png")) for i, (img, _) in enumerate(heldout)]
    out = client.post("/predict", files=files, data={"model": name}).json()
    assert out["version"] == 1 and len(out["predictions"]) == len(heldout)


def test_invalid_combinations_are_422(sqlite_service):
    client, _settings, _enqueued, dataset_id, _ = sqlite_service
    base = {"dataset_id": dataset_id, "arch": "efficientnet_lite0"}
    r = client.post("/jobs", json={**base, "strategy": "lora", "weights": "none"})
    assert r.status_code == 422 and "lora adapts pretrained weights" in r.json()["error"]["message"]
    r = client.post("/jobs", json={**base, "strategy": "partial", "unfreeze_stages": 9})
    assert r.status_code == 422 and "efficientnet_lite0 has 8 stages" in r.json()["error"]["message"]
    r = client.post("/jobs", json={**base, "mixup_prob": 0.7, "cutmix_prob": 0.6})
    assert r.status_code == 422 and "at most 1" in r.json()["error"]["message"]
    r = client.post("/jobs", json={**base, "augmentation": "sparkles"})
    assert r.status_code == 422 and "augmentation" in r.json()["error"]["message"]
    r = client.post("/jobs", json={**base, "strategy": "linear", "probe_epochs": 2})
    assert r.status_code == 422 and "probe_epochs is for partial, full and lora" in r.json()["error"]["message"]
    r = client.post("/jobs", json={**base, "strategy": "full", "weights": "none", "probe_epochs": 2})
    assert r.status_code == 422 and "probe_epochs needs pretrained weights" in r.json()["error"]["message"]
    r = client.post("/jobs", json={**base, "schedule": "step"})
    assert r.status_code == 422 and "schedule" in r.json()["error"]["message"]
