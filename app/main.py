"""create_app(): the FastAPI application, its lifespan resources, routers and error rendering."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import datasets, health, jobs, models, predict
from app.config import Settings, get_settings
from app.db import make_engine, make_sessionmaker
from app.errors import VisiontuneError
from app.ml.predictor import ModelCache

log = logging.getLogger("visiontune.api")


def celery_enqueue(settings: Settings) -> Callable[[uuid.UUID], None]:
    """Send the training task for a job id to the broker."""
    from worker.celery_app import make_celery, send_train_task

    celery = make_celery(settings)

    def enqueue(job_id: uuid.UUID) -> None:
        try:
            send_train_task(celery, settings, job_id)
        except Exception:  # the job stays queued in SQL and the reaper sends it later; logged, not lost
            log.exception("could not enqueue job %s", job_id)

    return enqueue


def _error(status: int, code: str, message: str, details: object = None) -> JSONResponse:
    body: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VisiontuneError)
    async def expected(_req: Request, exc: VisiontuneError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return _error(422, "validation_error", _describe_validation(exc), details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error(500, "internal_error", "internal error; see the server log")


def create_app(settings: Settings | None = None, enqueue: Callable[[uuid.UUID], None] | None = None) -> FastAPI:
    """The API. `enqueue` defaults to sending a Celery task to settings.broker_url."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url())
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.model_cache = ModelCache()
        app.state.enqueue = enqueue or celery_enqueue(settings)
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="visiontune",
        version="0.1.0",
        summary="Fine-tune image classifiers on Celery GPU workers and serve the best checkpoint.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (health, datasets, jobs, models, predict):
        app.include_router(module.router)
    return app
