"""The SDK's event stream over a real HTTP connection that breaks mid-event: it reconnects with Last-Event-ID and
yields every event exactly once, in order; a half-received event is never yielded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from tests.client.conftest import fake_server
from visiontune import Client, WaitTimeout
from visiontune.events import JobEvent, stream_events
from visiontune.transport import Transport

EVENTS = [
    JobEvent("1-0", "status", {"status": "queued", "error": None, "attempt": 0}),
    JobEvent("2-0", "status", {"status": "running", "error": None, "attempt": 1}),
    JobEvent("3-0", "progress", {"epoch": 1, "epochs": 1, "step": 1, "steps": 2, "loss": 0.5}),
    JobEvent("4-0", "epoch", {"epoch": 1, "train_loss": 0.4}),
    JobEvent("5-0", "status", {"status": "succeeded", "error": None, "attempt": 1}),
]


def encode(event: JobEvent) -> bytes:
    return f"event: {event.type}\ndata: {json.dumps(event.data)}\nid: {event.id}\n\n".encode()


class Feed(BaseHTTPRequestHandler):
    """GET: the events after Last-Event-ID; the first connection breaks halfway through its third event."""

    asked: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        last = self.headers.get("Last-Event-ID")
        self.asked.append(last)
        after = next((i + 1 for i, e in enumerate(EVENTS) if e.id == last), 0)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        if len(self.asked) == 1:
            self.wfile.write(b": keep-alive\n\n" + encode(EVENTS[0]) + encode(EVENTS[1]) + encode(EVENTS[2])[:25])
            return  # the connection closes mid-event
        for event in EVENTS[after:]:
            self.wfile.write(encode(event))

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def feed() -> Iterator[str]:
    Feed.asked = []
    with fake_server(Feed) as url:
        yield url


def test_a_broken_stream_resumes_after_the_last_whole_event(feed: str) -> None:
    transport = Transport(feed, None, timeout=10)
    pauses: list[float] = []
    try:
        received = list(stream_events(transport, "job", sleep=pauses.append))
    finally:
        transport.close()
    assert received == EVENTS
    assert Feed.asked == [None, "2-0"]
    assert pauses == [0.5]


class NoEvents(BaseHTTPRequestHandler):
    """A server without live events (503 on /events): GET /jobs/{id} says running twice, then succeeded."""

    polls = 0

    def do_GET(self) -> None:  # noqa: N802
        if self.path.endswith("/events"):
            body = {"error": {"code": "service_unavailable", "message": "live events need Redis"}}
            status = 503
        else:
            NoEvents.polls += 1
            status, body = 200, job_detail("running" if NoEvents.polls <= 3 else "succeeded")
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def job_detail(status: str) -> dict[str, object]:
    now = "2026-12-06T12:00:00Z"
    return {
        "id": "6b0f2b4e-8a70-4c1e-9b3a-3f4f3c1d2e10",
        "status": status,
        "dataset_id": None,
        "model_name": "m",
        "arch": "resnet18",
        "weights": "none",
        "strategy": "linear",
        "attempt": 1,
        "failures": 0,
        "max_attempts": 3,
        "retry_after": None,
        "last_epoch": None,
        "error": None,
        "best_epoch": None,
        "created_at": now,
        "started_at": now,
        "finished_at": None,
        "config": {"epochs": 1},
        "cancel_requested": False,
        "epochs": [],
        "val_metrics": None,
        "test_metrics": None,
    }


def test_wait_polls_the_job_when_the_server_keeps_no_live_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("visiontune.jobs.POLL_SECONDS", 0.01)
    NoEvents.polls = 0
    with fake_server(NoEvents) as url, Client(url, "vt_x") as client:
        done = client.jobs.wait("6b0f2b4e-8a70-4c1e-9b3a-3f4f3c1d2e10", timeout=30)
    assert done.status == "succeeded" and NoEvents.polls == 5  # the handle, 2 polls running, 1 done, the refresh


class KeepAlivesOnly(BaseHTTPRequestHandler):
    """A job that runs on and on: GET /jobs/{id} says running; its event stream sends the status, then only
    keep-alive comments (every 0.1 s, for at most 30 s) until the client hangs up."""

    ended: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        if not self.path.endswith("/events"):
            data = json.dumps(job_detail("running")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        pace = threading.Event()
        try:
            self.wfile.write(encode(EVENTS[1]))
            for _ in range(300):
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
                pace.wait(0.1)
        except (BrokenPipeError, ConnectionResetError):
            self.ended.append("the client hung up")
        else:
            self.ended.append("the server ran out of keep-alives")

    def log_message(self, *args: object) -> None:
        pass


def test_wait_times_out_while_only_keep_alives_come() -> None:
    KeepAlivesOnly.ended = []
    with fake_server(KeepAlivesOnly) as url:
        with Client(url, "vt_x") as client:
            job = client.jobs.job("6b0f2b4e-8a70-4c1e-9b3a-3f4f3c1d2e10")
            with pytest.raises(WaitTimeout, match="did not finish within 1 s"):
                job.wait(timeout=1)
        deadline = time.monotonic() + 30
        while not KeepAlivesOnly.ended and time.monotonic() < deadline:
            time.sleep(0.05)
    # The wait gave up on its own, while comments still came, instead of when the stream ended.
    assert KeepAlivesOnly.ended == ["the client hung up"]
