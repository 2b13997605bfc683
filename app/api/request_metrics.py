"""HTTP metrics as plain ASGI middleware (no BaseHTTPMiddleware: bodies and event streams pass untouched).

Each request is counted by method, route template and status once its response ends (an SSE stream when it
closes), and its latency observed, except for event streams, whose length is the client's. The route is the
template FastAPI matched (`/jobs/{job_id}`), never the raw path; a request the routing never reached (a guard's
401 or 413) is matched against the documented route templates here, and a path no route knows counts as
`unmatched`, so the label sets stay bounded whatever clients send. A request whose client went away before its
response started (the request cancelled, or its body cut off by a disconnect) counts as status 499, nginx's
"client closed request", not as a server error.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.monitoring.instruments import HTTP_LATENCY, HTTP_REQUESTS

UNMATCHED = "unmatched"
CLIENT_CLOSED = 499  # nginx's status for a request its client abandoned before the response
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RouteTemplates:
    """The route templates (`/jobs/{job_id}`) a path matches, compiled once on first use."""

    def __init__(self, templates: Callable[[], Iterable[str]]) -> None:
        self._source = templates
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def match(self, path: str) -> str:
        if self._compiled is None:
            self._compiled = [(compile_path(t)[0], t) for t in self._source()]
        for regex, template in self._compiled:
            if regex.match(path):
                return template
        return UNMATCHED


def route_template(scope: Scope, templates: RouteTemplates) -> str:
    """The template of the route that served this request, or the one that would have, else `unmatched`."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    return templates.match(route_path(scope))


def route_path(scope: Scope) -> str:
    """The request's path below the app's root_path (what the routes match)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class RequestMetrics:
    """Counts and times every HTTP request (see the module docstring); `templates` lists the app's route
    templates, for the requests its routing never saw."""

    def __init__(self, app: ASGIApp, templates: Callable[[], Iterable[str]]) -> None:
        self.app = app
        self.templates = RouteTemplates(templates)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None
        streaming = disconnected = cancelled = False

        async def observed_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def observed_send(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                        streaming = True
            await send(message)

        try:
            await self.app(scope, observed_receive, observed_send)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if status is None:  # no response started: the client left, or an exception is answered 500 outside us
                status = CLIENT_CLOSED if cancelled or disconnected else 500
            method = scope["method"] if scope["method"] in METHODS else "other"
            labels = (method, route_template(scope, self.templates), str(status))
            HTTP_REQUESTS.labels(*labels).inc()
            if not streaming:
                HTTP_LATENCY.labels(*labels).observe(time.perf_counter() - start)
