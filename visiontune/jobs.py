"""client.jobs: submit (a Job handle to follow and wait on), list, get, cancel, events."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console

from app.schemas import JobDetail, JobSummary, Page
from visiontune.errors import APIError, JobCanceled, JobFailed, WaitTimeout
from visiontune.events import TERMINAL_STATUSES, JobEvent, stream_events
from visiontune.progress import JobProgress

if TYPE_CHECKING:
    from visiontune.transport import Transport

POLL_SECONDS = 2.0  # only when the server has no live events (503): GET /jobs/{id} this often


class Job:
    """A submitted job: `id`, its last known state `detail`, and ways to follow it."""

    def __init__(self, jobs: Jobs, detail: JobDetail) -> None:
        self._jobs = jobs
        self.detail = detail
        self.id = detail.id

    def __repr__(self) -> str:
        return f"Job(id={str(self.id)!r}, status={self.status!r})"

    @property
    def status(self) -> str:
        return self.detail.status

    def refresh(self) -> JobDetail:
        """Fetch the job again (GET /jobs/{id})."""
        self.detail = self._jobs.get(self.id)
        return self.detail

    def cancel(self) -> JobDetail:
        self.detail = self._jobs.cancel(self.id)
        return self.detail

    def events(self, last_event_id: str | None = None, *, follow: bool = True) -> Iterator[JobEvent]:
        """Its events (status, progress, epoch) from the start or after last_event_id, until it finishes;
        a dropped connection is resumed with Last-Event-ID. follow=False: only those published so far."""
        return self._jobs.events(self.id, last_event_id, follow=follow)

    def wait(self, progress: bool = False, timeout: float | None = None, console: Console | None = None) -> JobDetail:
        """Block until the job finishes and return its final state; raise JobFailed or JobCanceled when it ends
        badly, WaitTimeout after `timeout` seconds (the job goes on). progress=True shows rich progress bars
        (epoch, step, loss, ETA) on stderr, or on `console`."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        epochs = self.detail.config.get("epochs")
        view = JobProgress(console or Console(stderr=True), epochs if isinstance(epochs, int) else None)
        try:
            with view if progress else contextlib.nullcontext():
                try:
                    for event in self._jobs.events(self.id, deadline=deadline):
                        if progress:
                            view.handle(event)
                except APIError as exc:
                    if exc.status != 503:  # 503: this server keeps no live events; poll instead
                        raise
                    self._poll(deadline)
        except WaitTimeout:
            raise WaitTimeout(str(self.id), timeout) from None
        detail = self.refresh()
        if detail.status == "failed":
            raise JobFailed(detail)
        if detail.status == "canceled":
            raise JobCanceled(detail)
        if detail.status != "succeeded":
            raise WaitTimeout(str(self.id), timeout)
        return detail

    def _poll(self, deadline: float | None) -> None:
        while self.refresh().status not in TERMINAL_STATUSES:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(str(self.id), None)
            time.sleep(POLL_SECONDS)


class Jobs:
    def __init__(self, transport: Transport) -> None:
        self._http = transport

    def submit(
        self, spec: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> Job:
        """Queue a job: `spec` (a dict, e.g. read from YAML) and/or keyword fields of POST /jobs (dataset_id,
        model_name, arch, strategy, epochs, ...; keywords win). Returns a Job handle."""
        body = {**(spec or {}), **fields}
        body = {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in body.items()}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._http.request("POST", "/jobs", json=body, headers=headers)
        return Job(self, self._http.parse(JobDetail, response))

    def get(self, job_id: str | uuid.UUID) -> JobDetail:
        return self._http.get_as(JobDetail, f"/jobs/{job_id}")

    def job(self, job_id: str | uuid.UUID) -> Job:
        """A handle on an existing job."""
        return Job(self, self.get(job_id))

    def list(self, status: str | None = None, limit: int = 50, offset: int = 0) -> Page[JobSummary]:
        """The project's jobs, newest first (optionally only those with this status)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._http.get_as(Page[JobSummary], "/jobs", params=params)

    def cancel(self, job_id: str | uuid.UUID) -> JobDetail:
        """Cancel a queued job now, or stop a running one within a batch."""
        return self._http.parse(JobDetail, self._http.request("POST", f"/jobs/{job_id}/cancel"))

    def delete(self, job_id: str | uuid.UUID) -> None:
        """Delete a finished job with its epochs, checkpoints and model version."""
        self._http.request("DELETE", f"/jobs/{job_id}")

    def events(
        self,
        job_id: str | uuid.UUID,
        last_event_id: str | None = None,
        *,
        follow: bool = True,
        deadline: float | None = None,
    ) -> Iterator[JobEvent]:
        """The job's events (see Job.events); past deadline (time.monotonic()) WaitTimeout is raised."""
        return stream_events(self._http, str(job_id), last_event_id, follow=follow, deadline=deadline)

    def wait(self, job_id: str | uuid.UUID, progress: bool = False, timeout: float | None = None) -> JobDetail:
        """Wait for an existing job (see Job.wait)."""
        return self.job(job_id).wait(progress=progress, timeout=timeout)
