"""The client commands of `visiontune` (login, datasets, jobs, models, predict): Typer + rich over the HTTP API.
`launcher.cli` hands them argv when its first word is one of COMMANDS."""

from __future__ import annotations

import json
import sys

import typer

from visiontune.cli import auth, datasets, jobs, models, predict
from visiontune.cli.common import EXIT_ERROR, err_console
from visiontune.errors import APIError, ClientError

app = typer.Typer(
    name="visiontune",
    help="visiontune client: talks to a visiontune server over its HTTP API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command()(auth.login)
app.command()(auth.logout)
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.add_typer(models.app, name="models")
app.command()(predict.predict)


def report(exc: ClientError, as_json: bool) -> None:
    """The error on stderr: the API's message (JSON with --json), never a traceback."""
    if as_json:
        body: dict[str, object] = {"message": str(exc)}
        if isinstance(exc, APIError):
            body = {"status": exc.status, "code": exc.code, "message": exc.message}
        sys.stderr.write(json.dumps({"error": body}) + "\n")
    else:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str]) -> int:
    """Run one client command; its exit code."""
    try:
        app(args=argv, prog_name="visiontune", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    except ClientError as exc:
        report(exc, "--json" in argv)
        return EXIT_ERROR
    except OSError as exc:  # a file to upload or classify that cannot be read
        where = f"{exc.filename}: " if exc.filename else ""
        report(ClientError(f"{where}{exc.strerror or exc}"), "--json" in argv)
        return EXIT_ERROR
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return 0
