"""GET /metrics in-process (single-process mode: the default registry): Prometheus's text format, a key with the
`metrics` scope (401 without a key, 403 with another scope), HTTP counters by route template that move with the
requests, the jobs by status counted in SQL, the broker's queue depth read from Redis (and a scrape that still
answers with the broker down); a request its client abandoned before the response counts as 499, not 500."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.api.request_metrics import RequestMetrics
from app.main import create_app
from app.queue import make_celery, redis_queue_keys, send_train_task
from tests.api.test_auth import bearer, make_key
from tests.conftest import REDIS_URL
from tests.factories import tiny_job
from tests.processes import free_port
from tests.prometheus import Samples, parse, series, total, value


def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return parse(r.text)


def test_metrics_needs_a_key_with_the_metrics_scope(client):
    scraper = make_key(client, ["metrics"], name="prometheus")["key"]
    reader = make_key(client, ["read"], name="reader")["key"]
    anon = TestClient(client.app, raise_server_exceptions=False)
    r = anon.get("/metrics")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = anon.get("/metrics", headers=bearer(reader))
    assert r.status_code == 403 and "'metrics' scope" in r.json()["error"]["message"]
    samples = scrape(anon, bearer(scraper))
    assert ("visiontune_database_up", frozenset()) in samples
    # The scraper's key can do nothing else.
    for path in ("/jobs", "/datasets", "/models", "/keys"):
        assert anon.get(path, headers=bearer(scraper)).status_code == 403, path
    assert anon.post("/predict", headers=bearer(scraper), content=b"x").status_code == 403
    # An admin key has it too.
    assert client.get("/metrics").status_code == 200


def test_http_requests_are_counted_by_route_template_and_status(client):
    job_id = uuid.uuid4()
    before = scrape(client)
    for _ in range(3):
        assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get("/health").status_code == 200
    assert client.get(f"/no/such/{uuid.uuid4()}").status_code == 404
    assert client.get("/jobs/not-a-uuid").status_code == 422
    # A guard's answer before any route ran (a POST without a key) still gets its route's template.
    assert client.post(f"/jobs/{job_id}/cancel", headers={"Authorization": ""}).status_code == 401
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "visiontune_http_requests_total"
    assert moved(requests, method="GET", route="/jobs/{job_id}", status="404") == 3
    assert moved(requests, method="GET", route="/jobs/{job_id}", status="422") == 1
    assert moved(requests, method="GET", route="/health", status="200") == 1
    assert moved(requests, method="GET", route="unmatched", status="404") == 1
    assert moved(requests, method="POST", route="/jobs/{job_id}/cancel", status="401") == 1
    assert moved(requests, method="GET", route="/metrics", status="200") == 1  # the first scrape
    latency = "visiontune_http_request_duration_seconds_count"
    assert moved(latency, method="GET", route="/jobs/{job_id}", status="404") == 3
    assert moved("visiontune_http_request_duration_seconds_sum", method="GET", route="/health", status="200") > 0
    assert value(after, "visiontune_http_request_duration_seconds_bucket", method="GET", route="/health",
                 status="200", le="+Inf") >= 1  # fmt: skip
    # Raw paths never become labels.
    routes = {labels["route"] for labels in series(after, requests)}
    assert not any(str(job_id) in r or "not-a-uuid" in r for r in routes), routes


def test_event_streams_are_counted_when_they_end_and_left_out_of_latency(client, dataset_id):
    r = client.post("/jobs", json=tiny_job(dataset_id))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200  # terminal: its stream replays and closes
    before = scrape(client)
    r = client.get(f"/jobs/{job_id}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    after = scrape(client)
    labels = {"method": "GET", "route": "/jobs/{job_id}/events", "status": "200"}
    assert (
        value(after, "visiontune_http_requests_total", **labels)
        - value(before, "visiontune_http_requests_total", **labels)
        == 1
    )
    assert value(after, "visiontune_http_request_duration_seconds_count", **labels) == value(
        before, "visiontune_http_request_duration_seconds_count", **labels
    )


def test_jobs_by_status_are_counted_in_sql_at_scrape_time(client, dataset_id):
    before = scrape(client)
    r = client.post("/jobs", json=tiny_job(dataset_id))
    assert r.status_code == 202, r.text
    queued = scrape(client)
    assert value(queued, "visiontune_jobs", status="queued") == value(before, "visiontune_jobs", status="queued") + 1
    assert client.post(f"/jobs/{r.json()['id']}/cancel").status_code == 200
    after = scrape(client)
    assert value(after, "visiontune_jobs", status="queued") == value(before, "visiontune_jobs", status="queued")
    assert value(after, "visiontune_jobs", status="canceled") == value(before, "visiontune_jobs", status="canceled") + 1
    assert {s["status"] for s in series(after, "visiontune_jobs")} >= {"queued", "running", "succeeded", "failed"}
    assert value(after, "visiontune_database_up") == 1


def test_queue_depth_is_read_from_the_broker(client, settings):
    celery = make_celery(settings)
    store = redis.Redis.from_url(settings.broker_url)
    try:
        for _ in range(2):
            send_train_task(celery, settings, uuid.uuid4())
        send_train_task(celery, settings, uuid.uuid4(), resent=True)
        samples = scrape(client)
        assert value(samples, "visiontune_queue_messages", queue=settings.queue, priority="new") == 2
        assert value(samples, "visiontune_queue_messages", queue=settings.queue, priority="resent") == 1
        assert total(samples, "visiontune_queue_messages") >= 3
        assert value(samples, "visiontune_broker_up") == 1
    finally:
        store.delete(*redis_queue_keys(settings.queue))
        store.close()


def test_a_broker_that_is_down_does_not_fail_the_scrape(settings, tmp_path):
    settings.broker_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings.events_url = f"{REDIS_URL}/0"
    settings.rate_limit_storage_url = "memory://"
    app = create_app(settings, enqueue=lambda _id: None, enqueue_export=lambda _id: None)
    with TestClient(app, headers={"Authorization": f"Bearer {settings.admin_key}"}) as c:
        samples = scrape(c)
    assert value(samples, "visiontune_broker_up") == 0
    assert series(samples, "visiontune_queue_messages") == []
    assert value(samples, "visiontune_database_up") == 1


def test_a_request_its_client_abandoned_counts_as_499_not_500():
    """An upload cut off by a disconnect, or a request cancelled (client gone) before its response started, is the
    client's doing: status 499 (nginx's "client closed request"); an exception of the app stays a 500."""
    started = asyncio.Event()

    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    async def slow(request: Request) -> PlainTextResponse:
        started.set()
        await asyncio.Event().wait()  # until cancelled
        raise AssertionError("unreachable")

    async def broken(request: Request) -> PlainTextResponse:
        raise RuntimeError("a bug")

    routes = [Route("/t/upload", upload, methods=["POST"]), Route("/t/slow", slow), Route("/t/broken", broken)]
    templates = ["/t/upload", "/t/slow", "/t/broken"]
    # As in app.main: inside Starlette's ServerErrorMiddleware (which answers an escaping exception with a 500).
    app = Starlette(routes=routes, middleware=[Middleware(RequestMetrics, templates=lambda: templates)])

    def scope(method: str, path: str) -> dict:
        return {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}

    async def sent(message: dict) -> None:
        pass

    async def run() -> None:
        parts = iter([{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}])

        async def cut_off() -> dict:
            return next(parts)

        with pytest.raises(ClientDisconnect):
            await app(scope("POST", "/t/upload"), cut_off, sent)

        async def waiting() -> dict:
            await asyncio.Event().wait()
            return {}

        task = asyncio.create_task(app(scope("GET", "/t/slow"), waiting, sent))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(RuntimeError):
            await app(scope("GET", "/t/broken"), waiting, sent)

    before = parse(generate_latest(REGISTRY).decode())
    asyncio.run(run())
    after = parse(generate_latest(REGISTRY).decode())

    def moved(method: str, route: str, status: str) -> float:
        labels = {"method": method, "route": route, "status": status}
        return value(after, "visiontune_http_requests_total", **labels) - value(
            before, "visiontune_http_requests_total", **labels
        )

    assert moved("POST", "/t/upload", "499") == 1 and moved("POST", "/t/upload", "500") == 0
    assert moved("GET", "/t/slow", "499") == 1 and moved("GET", "/t/slow", "500") == 0
    assert moved("GET", "/t/broken", "500") == 1
