"""The client commands of `visiontune` (login, datasets, jobs, models, predict): Typer + rich over the HTTP API.
`launcher.cli` hands them argv when its first word is one of COMMANDS."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from visiontune.cli import auth, datasets, jobs, models, predict
from visiontune.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, err_console, report
from visiontune.errors import BadResponse, ClientError


class _Commands(TyperGroup):
    """The command tree; Ctrl-C in any command ends it with `interrupted` and exit 130 (Typer's own handling
    exits silently, or prints `Aborted!` with exit 1 in older versions)."""

    def invoke(self, ctx: Any) -> Any:  # Any: a click.Context, or Typer's vendored one (typer >= 0.26)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False, highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None


app = typer.Typer(
    cls=_Commands,
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


def main(argv: list[str]) -> int:
    """Run one client command; its exit code."""
    try:
        app(args=argv, prog_name="visiontune", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    except ClientError as exc:
        report(exc, "--json" in argv)
        return EXIT_ERROR
    except ValidationError as exc:  # a body the SDK did not check (Transport.parse turns its own into BadResponse)
        report(BadResponse(f"the server's answer is not what this client expects: {exc}"), "--json" in argv)
        return EXIT_ERROR
    except OSError as exc:  # a file to upload or classify that cannot be read
        where = f"{exc.filename}: " if exc.filename else ""
        report(ClientError(f"{where}{exc.strerror or exc}"), "--json" in argv)
        return EXIT_ERROR
    return 0
