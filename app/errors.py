"""Expected failures, each with its HTTP status; one handler renders them as {"error": {...}}."""

from __future__ import annotations

from typing import Any


class VisiontuneError(Exception):
    """Base of every expected failure; never a 500."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class Unauthorized(VisiontuneError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(VisiontuneError):
    status_code = 404
    code = "not_found"


class Forbidden(VisiontuneError):
    status_code = 403
    code = "forbidden"


class Conflict(VisiontuneError):
    status_code = 409
    code = "conflict"


class PredictionsUnavailable(Conflict):
    """A job has no stored per-image validation predictions (not finished, no val split, or trained before)."""

    code = "predictions_unavailable"


class PayloadTooLarge(VisiontuneError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(VisiontuneError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidInput(VisiontuneError):
    status_code = 422
    code = "invalid_input"


class InvalidDataset(InvalidInput):
    code = "invalid_dataset"


class NoModelAvailable(VisiontuneError):
    status_code = 409
    code = "no_model_available"


class TooManyRequests(VisiontuneError):
    """A rate limit or a quota on concurrent work; Retry-After says when to try again (seconds)."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int | None = None, details: Any = None) -> None:
        headers = {"Retry-After": str(max(1, retry_after))} if retry_after is not None else None
        super().__init__(message, details, headers)


class ServiceUnavailable(VisiontuneError):
    """The server cannot answer in time now (e.g. the prediction queue is full); Retry-After says when to retry."""

    status_code = 503
    code = "service_unavailable"

    def __init__(self, message: str, retry_after: int | None = None, details: Any = None) -> None:
        headers = {"Retry-After": str(max(1, retry_after))} if retry_after is not None else None
        super().__init__(message, details, headers)
