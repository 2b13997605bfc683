"""The SDK's event stream over a real HTTP connection that breaks mid-event: it reconnects with Last-Event-ID and
yields every event exactly once, in order; a half-received event is never yielded."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

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
    server = ThreadingHTTPServer(("127.0.0.1", 0), Feed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
