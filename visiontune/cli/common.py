"""What every client command shares: the --json option, output (a rich console or JSON only), the Client."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Column
from rich.text import Text

from visiontune.client import Client
from visiontune.errors import APIError, BadResponse, ClientError, JobCanceled, JobFailed, ServerUnreachable, WaitTimeout
from visiontune.jobs import Job
from visiontune.progress import pct

# Exit codes (documented in the README): 0 done / the job succeeded.
EXIT_ERROR = 1  # the API refused, the server did not answer, bad input
EXIT_USAGE = 2  # unknown command or option (Click's own)
EXIT_JOB_FAILED = 3
EXIT_JOB_CANCELED = 4
EXIT_WAIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only (no tables, bars or colour).")]


def _console(stderr: bool = False) -> Console:
    """A rich console; off a terminal (pipes, logs) 140 columns wide unless COLUMNS says otherwise, so that tables
    keep whole ids."""
    out = Console(stderr=stderr)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(stderr=stderr, width=140)
    return out


console = _console()
err_console = _console(stderr=True)


def say(text: str, stderr: bool = False) -> None:
    """One line of text as it is: never read as rich markup (API names may hold brackets), never highlighted."""
    (err_console if stderr else console).print(text, markup=False, highlight=False, soft_wrap=True)


def emit(value: Any, as_json: bool, render: Callable[[], None]) -> None:
    """value as JSON under --json, else what render() prints."""
    if as_json:
        print_json(value)
    else:
        render()


def report(exc: ClientError, as_json: bool) -> None:
    """An error on stderr, never a traceback: `error: MESSAGE`, or with --json `{"error": {"code", "message"}}`
    (plus the HTTP `status` when the API refused)."""
    if as_json:
        body: dict[str, object]
        if isinstance(exc, APIError):
            body = {"status": exc.status, "code": exc.code, "message": exc.message}
        else:
            body = {"code": client_error_code(exc), "message": str(exc)}
        sys.stderr.write(json.dumps({"error": body}) + "\n")
        sys.stderr.flush()
    else:
        say(f"error: {exc}", stderr=True)


def client_error_code(exc: ClientError) -> str:
    """The `code` of an error that did not come from the API."""
    if isinstance(exc, WaitTimeout):
        return "wait_timeout"
    if isinstance(exc, ServerUnreachable):
        return "server_unreachable"
    if isinstance(exc, BadResponse):
        return "bad_response"
    return "client_error"


def plain(value: Any) -> Text:
    """A value from the API (a name, a label, a status) as literal text: `[bold]` in a dataset's name is shown as
    typed, never read as rich markup."""
    return Text("-" if value is None else str(value))


def client() -> Client:
    """The server and key from VISIONTUNE_URL / VISIONTUNE_KEY, else the saved login."""
    return Client()


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any, indent: int | None = 2) -> None:
    """JSON on stdout, nothing else (for jq or json.loads)."""
    sys.stdout.write(json.dumps(to_jsonable(value), indent=indent) + "\n")
    sys.stdout.flush()


ID = Column("id", no_wrap=True, min_width=36)  # ids are copied from tables whole


def when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def follow(job: Job, as_json: bool, timeout: float | None) -> None:
    """Follow a job to its end: progress bars (or lines off a terminal) unless as_json; the final JobDetail as
    JSON with as_json. Exits EXIT_JOB_FAILED / EXIT_JOB_CANCELED / EXIT_WAIT_TIMEOUT when it ends badly."""
    code = 0
    try:
        detail = job.wait(progress=not as_json, timeout=timeout, console=console)
    except (JobFailed, JobCanceled) as exc:
        detail = exc.job
        code = EXIT_JOB_FAILED if isinstance(exc, JobFailed) else EXIT_JOB_CANCELED
    except WaitTimeout as exc:
        report(exc, as_json)
        raise typer.Exit(EXIT_WAIT_TIMEOUT) from None
    if as_json:
        print_json(detail)
    else:
        summary = f"job {detail.id} {detail.status}"
        if detail.status == "succeeded":
            best = next((e for e in detail.epochs if e.epoch == detail.best_epoch), None)
            acc = f", best val accuracy {pct(best.val_accuracy)} (epoch {best.epoch})" if best else ""
            version = f"; {detail.model_name} version {detail.model_version}" if detail.model_version else ""
            summary += acc + version
        elif detail.error:
            summary += f": {detail.error}"
        say(summary, stderr=code != 0)
    if code:
        raise typer.Exit(code)
