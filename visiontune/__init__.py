"""visiontune's Python SDK: `from visiontune import Client`. It talks to the public HTTP API only and returns the
API's own pydantic models (app.schemas)."""

from visiontune.client import Client
from visiontune.errors import (
    APIError,
    BadResponse,
    ClientError,
    JobCanceled,
    JobError,
    JobFailed,
    ServerUnreachable,
    WaitTimeout,
)
from visiontune.events import JobEvent
from visiontune.jobs import Job

__all__ = [
    "APIError",
    "BadResponse",
    "Client",
    "ClientError",
    "Job",
    "JobCanceled",
    "JobError",
    "JobEvent",
    "JobFailed",
    "ServerUnreachable",
    "WaitTimeout",
]
