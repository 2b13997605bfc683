"""Aliases (`name@alias` on /predict), the history of pin and alias changes, and rollback: per project, with
scopes, and cleaned up when a version's job is deleted."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.db import make_engine, make_sessionmaker
from tests.factories import color_images_zip, png_bytes, tiny_job
from worker.runner import JobRunner


@pytest.fixture
def runner(settings):
    engine = make_engine(settings.resolved_database_url())
    yield JobRunner(settings, make_sessionmaker(engine), worker_id="test")
    engine.dispose()


def project_client(client, scopes: list[str], project: str | None = None, name: str = "x") -> TestClient:
    """A client with a key of its own project (fresh per test: PostgreSQL's database is shared)."""
    project = project or f"p-{uuid.uuid4().hex[:8]}"
    r = client.post("/keys", json={"name": name, "scopes": scopes, "project": project})
    assert r.status_code == 201, r.text
    headers = {"Authorization": f"Bearer {r.json()['key']}"}
    c = TestClient(client.app, raise_server_exceptions=False, headers=headers)
    c.key = r.json()  # type: ignore[attr-defined]
    return c


def train_versions(c: TestClient, runner, enqueued, tmp_path, name: str, count: int) -> list[str]:
    """count versions of model name in c's project; their job ids, version 1 first."""
    archive = color_images_zip(tmp_path / "rgb.zip", {"red": 12, "green": 12, "blue": 12}, size=16)
    r = c.post("/datasets", files={"file": ("rgb.zip", archive.read_bytes())})
    assert r.status_code == 201, r.text
    jobs = []
    for _ in range(count):
        body = tiny_job(r.json()["id"], model_name=name, epochs=1, batch_size=12, val_fraction=0.25)
        job = c.post("/jobs", json=body)
        assert job.status_code == 202, job.text
        assert runner.run(enqueued[-1]) == "succeeded"
        jobs.append(job.json()["id"])
    return jobs


def predict(c: TestClient, model: str, **form: str):
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 220
    files = [("files", ("red.png", io.BytesIO(png_bytes(img)), "image/png"))]
    return c.post("/predict", files=files, data={"model": model, **form})


def changes(c: TestClient, name: str) -> list[tuple[str, str, int | None, int | None]]:
    """(action, target, from, to) of the model's history, newest first."""
    r = c.get(f"/models/{name}/history", params={"limit": 500})
    assert r.status_code == 200, r.text
    return [(e["action"], e["target"], e["from_version"], e["to_version"]) for e in r.json()["items"]]


def test_aliases_serve_move_roll_back_and_are_recorded(client, runner, enqueued, tmp_path):
    c = project_client(client, ["train", "predict"], name="alice")
    jobs = train_versions(c, runner, enqueued, tmp_path, "pets", 2)

    # Made, moved, served by /predict as name@alias, shown on the model.
    r = c.put("/models/pets/aliases/production", json={"version": 1})
    assert r.status_code == 200, r.text
    assert r.json()["aliases"] == {"production": 1}
    assert predict(c, "pets@production").json()["version"] == 1
    assert c.put("/models/pets/aliases/production", json={"version": 2}).json()["aliases"] == {"production": 2}
    got = predict(c, "pets@production").json()
    assert got["version"] == 2 and got["job_id"] == jobs[1] and got["model_name"] == "pets"
    assert c.put("/models/pets/aliases/staging", json={"version": 1}).status_code == 200
    assert c.get("/models/pets").json()["aliases"] == {"production": 2, "staging": 1}
    assert predict(c, "pets@staging").json()["version"] == 1

    # What cannot be: unknown versions, models and aliases, bad names and bodies, an alias with a version.
    assert c.put("/models/pets/aliases/production", json={"version": 9}).status_code == 404
    assert c.put("/models/nosuch/aliases/production", json={"version": 1}).status_code == 404
    for bad in ("Prod", "1st", "a" * 41, "a.b"):
        assert c.put(f"/models/pets/aliases/{bad}", json={"version": 1}).status_code == 422, bad
    for body in ({"version": "1"}, {"version": True}, {"version": 0}, {"version": 2**31}, {}, {"version": 1, "x": 1}):
        assert c.put("/models/pets/aliases/production", json=body).status_code == 422, body
    r = predict(c, "pets@canary")
    assert r.status_code == 404 and r.json()["error"]["message"] == "model 'pets' has no alias 'canary'"
    assert predict(c, "pets@production", version="1").status_code == 422
    assert predict(c, "pets@Not-An-Alias").status_code == 422
    assert c.get("/models/pets").json()["aliases"] == {"production": 2, "staging": 1}  # all refused, none changed

    # Rollback: an alias goes back to where its latest change moved it from; twice is back where it was.
    r = c.post("/models/pets/rollback", json={"alias": "production"})
    assert r.status_code == 200, r.text
    assert r.json()["aliases"]["production"] == 1
    assert predict(c, "pets@production").json()["version"] == 1
    assert c.post("/models/pets/rollback", json={"alias": "production"}).json()["aliases"]["production"] == 2

    # Deleted, then brought back by a rollback; a rollback of a fresh alias removes it.
    assert c.delete("/models/pets/aliases/staging").json()["aliases"] == {"production": 2}
    r = c.delete("/models/pets/aliases/staging")
    assert r.status_code == 404 and "no alias 'staging'" in r.json()["error"]["message"]
    assert predict(c, "pets@staging").status_code == 404
    assert c.post("/models/pets/rollback", json={"alias": "staging"}).json()["aliases"]["staging"] == 1
    assert c.post("/models/pets/rollback", json={"alias": "staging"}).json()["aliases"] == {"production": 2}

    # The pin: pin 1, pin 2, unpin; rollback pins 2 again, a second rollback unpins (its previous value).
    assert c.post("/models/pets/rollback").status_code == 409  # never pinned: nothing to roll back to
    assert c.post("/models/pets/versions/1/promote").json()["pinned_version"] == 1
    assert c.post("/models/pets/versions/2/promote").json()["pinned_version"] == 2
    assert c.delete("/models/pets/pin").json()["pinned_version"] is None
    r = c.post("/models/pets/rollback")
    assert r.status_code == 200 and r.json()["pinned_version"] == 2 and r.json()["serving_version"] == 2
    assert predict(c, "pets").json()["version"] == 2
    assert c.post("/models/pets/rollback", json={}).json()["pinned_version"] is None

    # 409 with a clear message when an alias never changed; 422 for a bad alias name in the body.
    r = c.post("/models/pets/rollback", json={"alias": "canary"})
    assert r.status_code == 409
    assert r.json()["error"]["message"] == "nothing to roll back: alias 'canary' of model 'pets' has never changed"
    assert c.post("/models/pets/rollback", json={"alias": "Bad Name"}).status_code == 422
    assert c.post("/models/pets/rollback", json={"target": "pin"}).status_code == 422

    # The history: every change, newest first, with who made it (refused requests left nothing).
    assert changes(c, "pets") == [
        ("rollback", "pin", 2, None),
        ("rollback", "pin", None, 2),
        ("unpin", "pin", 2, None),
        ("pin", "pin", 1, 2),
        ("pin", "pin", None, 1),
        ("rollback", "alias:staging", 1, None),
        ("rollback", "alias:staging", None, 1),
        ("alias-delete", "alias:staging", 1, None),
        ("rollback", "alias:production", 1, 2),
        ("rollback", "alias:production", 2, 1),
        ("alias", "alias:staging", None, 1),
        ("alias", "alias:production", 1, 2),
        ("alias", "alias:production", None, 1),
    ]
    page = c.get("/models/pets/history", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 13 and page["limit"] == 2 and page["offset"] == 1
    newest = page["items"][0]
    assert (newest["action"], newest["from_version"], newest["to_version"]) == ("rollback", None, 2)
    assert newest["actor"] == "alice" and newest["key_id"] == c.key["id"] and newest["model_name"] == "pets"
    assert newest["at"]
    assert c.get("/models/pets/history", params={"limit": 501}).status_code == 422
    assert c.get("/models/pets/history", params={"offset": -1}).status_code == 422
    assert c.get("/models/nosuch/history").status_code == 404

    # The audit log still has every change too.
    events = client.get("/audit", params={"project": c.key["project"], "limit": 500}).json()["items"]
    mine = [e for e in events if e["object_type"] == "model"]
    actions = [e["action"] for e in mine]
    assert actions.count("model.alias") == 3 and actions.count("model.rollback") == 6
    assert actions.count("model.alias_delete") == 1 and actions.count("model.pin") == 2
    assert all(e["actor"] == "alice" for e in mine)

    # Deleting a job removes the aliases on its version (and lifts its pin), each change in the history.
    assert c.post("/models/pets/versions/2/promote").status_code == 200
    assert c.put("/models/pets/aliases/staging", json={"version": 2}).status_code == 200
    assert c.put("/models/pets/aliases/canary", json={"version": 1}).status_code == 200
    assert c.delete(f"/jobs/{jobs[1]}").status_code == 204
    model = c.get("/models/pets").json()
    assert model["aliases"] == {"canary": 1} and model["pinned_version"] is None
    assert [v["version"] for v in model["versions"]] == [1]
    assert sorted(changes(c, "pets")[:3]) == [
        ("alias-delete", "alias:production", 2, None),
        ("alias-delete", "alias:staging", 2, None),
        ("unpin", "pin", 2, None),
    ]
    assert predict(c, "pets@production").status_code == 404
    r = c.post("/models/pets/rollback", json={"alias": "production"})
    assert r.status_code == 409 and "version 2 was deleted" in r.json()["error"]["message"]


def test_aliases_are_per_project_and_need_the_train_scope(client, runner, enqueued, tmp_path):
    a = project_client(client, ["train", "predict"], name="a")
    train_versions(a, runner, enqueued, tmp_path, "pets", 1)
    assert a.put("/models/pets/aliases/production", json={"version": 1}).status_code == 200

    # Another project's model is 404 everywhere, and its own model of the same name has no such alias.
    b = project_client(client, ["train", "predict"], name="b")
    assert b.get("/models/pets").status_code == 404
    assert b.put("/models/pets/aliases/production", json={"version": 1}).status_code == 404
    assert b.delete("/models/pets/aliases/production").status_code == 404
    assert b.get("/models/pets/history").status_code == 404
    assert b.post("/models/pets/rollback", json={"alias": "production"}).status_code == 404
    assert predict(b, "pets@production").status_code == 404
    train_versions(b, runner, enqueued, tmp_path, "pets", 1)
    r = predict(b, "pets@production")
    assert r.status_code == 404 and r.json()["error"]["message"] == "model 'pets' has no alias 'production'"
    assert b.get("/models/pets").json()["aliases"] == {}
    assert b.get("/models/pets/history").json()["total"] == 0
    assert a.get("/models/pets").json()["aliases"] == {"production": 1}
    assert len(a.get("/models/pets/history").json()["items"]) == 1

    # A read key of the same project sees aliases and history but changes nothing; predict keys do not read.
    reader = project_client(client, ["read"], project=a.key["project"], name="reader")
    assert reader.get("/models/pets").json()["aliases"] == {"production": 1}
    assert reader.get("/models/pets/history").json()["total"] == 1
    for method, path, body in [
        ("PUT", "/models/pets/aliases/production", {"version": 1}),
        ("DELETE", "/models/pets/aliases/production", None),
        ("POST", "/models/pets/rollback", {"alias": "production"}),
    ]:
        r = reader.request(method, path, json=body)
        assert r.status_code == 403 and "'train' scope" in r.json()["error"]["message"], (method, path)
    predictor = project_client(client, ["predict"], project=a.key["project"], name="predictor")
    assert predictor.get("/models/pets/history").status_code == 403
    assert predict(predictor, "pets@production").json()["version"] == 1
    assert a.get("/models/pets").json()["aliases"] == {"production": 1}
