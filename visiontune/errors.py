"""The client's errors: one base (ClientError), the API's refusals (APIError) and how a waited-on job ended."""

from __future__ import annotations

from typing import Any

from app.schemas import JobDetail


class ClientError(Exception):
    """Base of every error the client raises."""


class APIError(ClientError):
    """The server answered with an error: its HTTP status and the `{"error": {"code", "message"}}` body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class ServerUnreachable(ClientError):
    """No HTTP answer at all: the server is down, the URL is wrong, or the connection broke."""


class BadResponse(ClientError):
    """The server answered, but not with what this client reads: a body that is not the API's schema (another
    version of the API, or not a visiontune server at that URL), or an event whose data is not a JSON object."""


class WaitTimeout(ClientError, TimeoutError):
    """Job.wait(timeout=...) ran out before the job finished (the job goes on)."""

    def __init__(self, job_id: str, timeout: float | None) -> None:
        within = f" within {timeout:g} s" if timeout is not None else " in time"
        super().__init__(f"job {job_id} did not finish{within} (it goes on)")
        self.job_id = job_id


class JobError(ClientError):
    """A waited-on job ended without succeeding; `.job` is its final state."""

    def __init__(self, job: JobDetail) -> None:
        reason = f": {job.error}" if job.error else ""
        super().__init__(f"job {job.id} {job.status}{reason}")
        self.job = job


class JobFailed(JobError):
    """The job ended `failed` (its error says why)."""


class JobCanceled(JobError):
    """The job was canceled."""
