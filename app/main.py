"""create_app(): the FastAPI application, its lifespan resources, routers and error rendering."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import events
from app.api import audit, datasets, exports, health, jobs, keys, monitoring, predict, registry
from app.api.middleware import install_middleware
from app.api.ratelimit import RateLimiter
from app.api.swagger_ui import install_docs
from app.api.ui import install_ui
from app.auth import check_auth_mode, looks_like_key, server_secret
from app.config import Settings, get_settings
from app.db import make_engine, make_sessionmaker, session_scope
from app.errors import VisiontuneError
from app.ml.predictor import ModelCache
from app.monitoring.collectors import JobsByStatus, QueueDepth
from app.monitoring.multiproc import mark_dead
from app.queue import api_senders
from app.services.prediction import resolve_served
from app.serving.batcher import Batcher, serving_threads
from app.serving.host import ModelHost
from app.serving.targets import ServingTargets

log = logging.getLogger("visiontune.api")


def bootstrap_admin_key(factory: sessionmaker[Session], secret: bytes, plaintext: str) -> None:
    """VISIONTUNE_ADMIN_KEY becomes an admin key of the default project unless it already is one."""
    if not looks_like_key(plaintext):
        raise SystemExit(
            "VISIONTUNE_ADMIN_KEY must be 'vt_' + 43 URL-safe characters: make one with `visiontune keys new`"
        )
    from app.services.keys import ensure_admin_key

    for attempt in range(10):
        try:
            with session_scope(factory) as session:
                if ensure_admin_key(session, secret, plaintext):
                    log.info("made the admin key from VISIONTUNE_ADMIN_KEY")
            return
        except OperationalError:  # SQLite: API processes starting together collide on the write lock
            if attempt == 9:
                raise
            time.sleep(0.2 * (attempt + 1))


def _error(status: int, code: str, message: str, details: object = None) -> JSONResponse:
    body: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


MAX_VALIDATION_ERRORS = 20  # a 422 lists at most this many, each clipped: its size never follows the input's
MAX_VALIDATION_TEXT = 200


def _clip(text: str, limit: int = MAX_VALIDATION_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where and what for the first errors; the offending input values themselves are never echoed."""
    return [
        {
            "loc": [x if isinstance(x, int) else _clip(str(x), 100) for x in e.get("loc", ())],
            "msg": _clip(str(e.get("msg", ""))),
        }
        for e in exc.errors()[:MAX_VALIDATION_ERRORS]
    ]


def _describe_validation(exc: RequestValidationError, details: list[dict[str, Any]]) -> str:
    parts = []
    for err in details:
        where = ".".join(str(x) for x in err["loc"] if x not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err['msg']}")
    more = len(exc.errors()) - len(details)
    return _clip("; ".join(parts), 1000) + (f"; and {more} more" if more > 0 else "") or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VisiontuneError)
    async def expected(_req: Request, exc: VisiontuneError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        return _error(422, "validation_error", _describe_validation(exc, details), details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body FastAPI could not parse (bad JSON, not UTF-8): invalid input
            return _error(422, "invalid_body", "the request body is not valid JSON (or not the declared type)")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = _error(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(Exception)
    async def unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error(500, "internal_error", "internal error; see the server log")


def create_app(
    settings: Settings | None = None,
    enqueue: Callable[[uuid.UUID], None] | None = None,
    enqueue_export: Callable[[uuid.UUID], None] | None = None,
) -> FastAPI:
    """The API. `enqueue` and `enqueue_export` default to sending Celery tasks to settings.broker_url."""
    settings = settings or get_settings()
    check_auth_mode(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url())
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        # The forward runs in a model-host process of this API process's own (started on the first prediction).
        host = ModelHost(serving_threads(settings)) if settings.predict_isolation == "process" else None
        app.state.model_host = host
        app.state.model_cache = ModelCache(on_evict=(lambda key, _p: host.drop(key)) if host is not None else None)
        app.state.serving_targets = ServingTargets(
            app.state.model_cache,
            resolve_served,
            host,
            lookup_ttl_s=settings.predict_lookup_ttl_ms / 1000,
            precision=settings.predict_precision,
            compile=settings.predict_compile,
        )
        app.state.enqueue, app.state.enqueue_export = enqueue, enqueue_export
        if enqueue is None or enqueue_export is None:  # a Celery app; it connects on the first send
            send_train, send_export = api_senders(settings)
            app.state.enqueue = enqueue or send_train
            app.state.enqueue_export = enqueue_export or send_export
        app.state.secret = server_secret(settings)
        app.state.rate_limiter = RateLimiter(settings)
        events.configure(settings)  # the statuses this process changes (submit, cancel) are published
        events_url = events.events_url(settings)
        app.state.events_reader = events.Reader.from_url(events_url) if events_url else None
        if settings.admin_key:
            bootstrap_admin_key(app.state.sessionmaker, app.state.secret, settings.admin_key)
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        app.state.batcher = Batcher.from_settings(settings)  # this process's inference thread
        # /metrics: every process's files under the metrics root, and what is counted at scrape time.
        app.state.metrics_root = settings.resolved_metrics_dir()
        broker = settings.broker_redis_url()
        queue_depth = QueueDepth(broker, settings.queue) if broker else None
        app.state.metrics_collectors = [JobsByStatus(app.state.sessionmaker), *([queue_depth] if queue_depth else [])]
        try:
            yield
        finally:
            app.state.batcher.close()
            if queue_depth is not None:
                queue_depth.close()
            mark_dead(os.getpid())  # this process's live gauges go with it
            if host is not None:
                host.close()
            if app.state.events_reader is not None:
                await app.state.events_reader.close()
            engine.dispose()

    app = FastAPI(
        title="visiontune",
        version="0.1.0",
        summary="Fine-tune image classifiers on Celery GPU workers and serve the best checkpoint.",
        lifespan=lifespan,
        docs_url=None,  # served offline by install_docs (no CDN, no inline script)
        redoc_url=None,  # ReDoc needs inline styles and a blob: worker, which the CSP refuses
    )
    install_error_handlers(app)
    for module in (health, datasets, jobs, registry, exports, predict, keys, audit, monitoring):
        app.include_router(module.router)
    install_docs(app)
    install_ui(app)  # the /ui dashboard's page and files (no key; its data calls use the public API)
    install_middleware(app, settings)
    return app
