"""GET /metrics: Prometheus's text format, for a key with the `metrics` scope (or admin)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import MetricsCaller
from app.api.docs import errors
from app.monitoring.scrape import CONTENT_TYPE, render

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}, **errors()},
)
def metrics(request: Request, _caller: MetricsCaller) -> Response:
    """Every process's metrics on this host (HTTP, /predict batching, reaper, training workers) and, counted at
    scrape time, the jobs by status and the broker's queue depth. Server-wide: a `metrics` key of any project sees
    the same numbers (counts and timings, never data)."""
    body = render(request.app.state.metrics_root, request.app.state.metrics_collectors)
    return Response(body, media_type=CONTENT_TYPE)
