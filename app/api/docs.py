"""OpenAPI documentation of the errors routes answer: every route documents its 4xx with the error schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


DESCRIPTIONS = {
    400: "bad request",
    401: "no API key, or an unknown, revoked or expired one",
    403: "the API key lacks the scope this route needs",
    404: "no such object in the caller's project",
    409: "the object's state does not allow this",
    413: "the request or what it would store is over a configured limit",
    415: "the upload is not a supported file type",
    422: "the request is invalid; the message names the offending input",
    429: "a rate limit or quota was hit; Retry-After says when to try again",
    503: "the server cannot answer in time now (the prediction queue is full); Retry-After says when to retry",
}


def errors(*statuses: int, auth: bool = True) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the statuses it answers besides 2xx (401/403/422 for every keyed route)."""
    codes = set(statuses) | ({401, 403, 422} if auth else {422})
    return {code: {"model": ErrorResponse, "description": DESCRIPTIONS[code]} for code in sorted(codes)}
