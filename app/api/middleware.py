"""HTTP hardening around every route: security headers, CORS, a CSRF guard and a request-body size guard.

All of it is plain ASGI (no BaseHTTPMiddleware), so bodies stream through untouched and nothing is buffered.
Outermost first: RequestMetrics (app/api/request_metrics.py: every answer counted and timed, the guards' own
included), SecurityHeaders (so every answer, the guards' own included, carries the headers), CORS when origins are
configured (so a browser can read the guards' errors), RequireAuthorization, BodySizeLimit.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.request_metrics import RequestMetrics, route_path
from app.config import Settings

# Both stream their multipart bodies and enforce their own, larger limits while reading (app/api/uploads.py).
STREAMED_UPLOADS = frozenset({("POST", "/datasets"), ("POST", "/predict")})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HTML_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; object-src 'none'; base-uri 'none'"
)
ATTACHMENTS = ("/confusion.png", "/curves.png")  # artifact images are downloads, never rendered inline by us
_SAFE_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Add the hardening middleware to app (call once, after the routers; the last added runs first)."""
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_json_bytes, exempt=STREAMED_UPLOADS)
    app.add_middleware(RequireAuthorization)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
        )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, templates=lambda: list(app.openapi()["paths"]))


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class SecurityHeaders:
    """nosniff, no referrer, no framing on every response; a strict CSP on HTML; no-store on JSON;
    artifact PNGs as attachments."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "DENY"
                content_type = headers.get("content-type", "")
                if content_type.startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", HTML_CSP)
                elif content_type.startswith("application/json"):
                    headers.setdefault("Cache-Control", "no-store")
                elif content_type.startswith("image/png") and path.endswith(ATTACHMENTS):
                    headers.setdefault("Content-Disposition", _attachment(path))
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _attachment(path: str) -> str:
    """`attachment; filename="<job id>-curves.png"` for /jobs/<job id>/curves.png."""
    parts = path.rsplit("/", 2)
    name = parts[-1]
    if len(parts) == 3 and _SAFE_NAME.fullmatch(parts[1]):
        name = f"{parts[1]}-{name}"
    return f'attachment; filename="{name}"'


class RequireAuthorization:
    """A state-changing request without an Authorization header is a 401 before any route runs or any body
    is read. A cross-site form or fetch without CORS approval cannot set that header, so this stops CSRF even
    when authentication is off; the auth dependency validates the key itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            if not Headers(scope=scope).get("authorization", "").strip():
                response = _error(
                    401,
                    "unauthorized",
                    f"{scope['method']} requests need an `Authorization: Bearer <API key>` header",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """413 for a request body over max_bytes: from its Content-Length before anything is read, else as soon as
    the running count of received bytes passes it (the route then sees a disconnect; its answer is dropped)."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    def _too_large(self) -> JSONResponse:
        return _error(
            413, "payload_too_large", f"the request body is larger than the limit of {self.max_bytes:,} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], route_path(scope)) in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return

        received = 0
        over = False  # past the limit: the app reads a disconnect from now on
        started = False  # the app began its response: too late for a 413
        refused = False  # the 413 went out: what the app still sends is dropped

        async def counted_receive() -> Message:
            nonlocal received, over, refused
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    if not started:
                        await self._too_large()(scope, receive, send)
                        refused = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
