"""GET /jobs/{id}/events in-process: who may read it, Last-Event-ID's format, a finished job's replay (and the
status SQL gives when its events are gone), and a 503 when the events' Redis does not answer."""

from __future__ import annotations

import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from app.events import stream_key
from app.main import create_app
from tests.conftest import REDIS_URL
from tests.factories import tiny_job
from visiontune.events import JobEvent, parse_sse

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def canceled_job(client: TestClient, dataset_id: str) -> str:
    """A job submitted and canceled while queued: its stream is queued, canceled (both published by the API)."""
    r = client.post("/jobs", json=tiny_job(dataset_id, epochs=1))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    return job_id


def read_all(client: TestClient, job_id: str, **headers: str) -> list[JobEvent]:
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return list(parse_sse(r.iter_lines()))


def test_a_finished_job_replays_its_history_and_closes(client, dataset_id):
    job_id = canceled_job(client, dataset_id)
    stored = redis.Redis.from_url(f"{REDIS_URL}/0").xrange(stream_key(job_id))
    got = read_all(client, job_id)
    assert [(e.type, e.data["status"]) for e in got] == [("status", "queued"), ("status", "canceled")]
    assert [e.id for e in got] == [i.decode() for i, _ in stored]

    resumed = read_all(client, job_id, **{"Last-Event-ID": got[0].id})
    assert [(e.id, e.data["status"]) for e in resumed] == [(got[1].id, "canceled")]


def test_a_finished_job_without_events_gets_its_status_from_sql(client, dataset_id):
    job_id = canceled_job(client, dataset_id)
    redis.Redis.from_url(f"{REDIS_URL}/0").delete(stream_key(job_id))
    got = read_all(client, job_id)
    assert [(e.id, e.type, e.data["status"]) for e in got] == [(None, "status", "canceled")]
    assert got[0].data["error"] == "canceled by request"


def test_who_may_read_and_what_last_event_id_may_be(client, dataset_id):
    job_id = canceled_job(client, dataset_id)
    anonymous = TestClient(client.app, raise_server_exceptions=False)
    assert anonymous.get(f"/jobs/{job_id}/events").status_code == 401

    r = client.post("/keys", json={"name": "other", "scopes": ["read"], "project": f"other-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    other = {"Authorization": f"Bearer {r.json()['key']}"}
    r = client.get(f"/jobs/{job_id}/events", headers=other)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get(f"/jobs/{uuid.uuid4()}/events").status_code == 404

    for bad in ("abc", "1-", "-1", "1-2-3", "1 -2"):
        r = client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "validation_error"


def test_events_redis_down_is_a_503(settings, dataset_id, client):
    job_id = canceled_job(client, dataset_id)
    app = create_app(settings.model_copy(update={"events_url": "redis://127.0.0.1:1/0"}), enqueue=lambda _id: None)
    with TestClient(app, raise_server_exceptions=False, headers=dict(client.headers)) as down:
        r = down.get(f"/jobs/{job_id}/events")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "service_unavailable" and "Retry-After" in r.headers


def test_the_route_is_documented(client):
    op = client.get("/openapi.json").json()["paths"]["/jobs/{job_id}/events"]["get"]
    assert {"200", "401", "404", "422", "503"} <= set(op["responses"])
    assert "text/event-stream" in op["responses"]["200"]["content"]
