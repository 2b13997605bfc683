"""`visiontune models list|show|promote|unpin|alias|rollback`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Column, Table
from rich.text import Text

from app.schemas import ModelOut
from visiontune.cli.common import JsonOpt, client, console, emit, plain, print_json, say, when
from visiontune.progress import pct

app = typer.Typer(help="The model registry: versions, what serves, pins, aliases, rollback.", no_args_is_help=True)

BackendOpt = Annotated[str | None, typer.Option(help="torch, onnx or int8 (when that export is verified)")]


def aliases(m: ModelOut) -> str:
    return ", ".join(f"{a}→v{v}" for a, v in sorted(m.aliases.items())) or "-"


def show_model(m: ModelOut) -> None:
    pinned = f"v{m.pinned_version}" if m.pinned_version else "none"
    serving = f"v{m.serving_version}" if m.serving_version else "none"
    console.print(Text.assemble((m.name, "bold"), f"  serving {serving}, pinned {pinned}, aliases {aliases(m)}"))
    table = Table(
        "version", "serving", Column("job", no_wrap=True, min_width=36), "arch", "val acc", "test acc", "created"
    )
    for v in m.versions:
        table.add_row(
            str(v.version),
            "✓" if v.serving else "",
            str(v.job_id),
            plain(v.arch),
            pct(v.val_accuracy),
            pct(v.test_accuracy),
            when(v.created_at),
        )
    console.print(table)


def done(m: ModelOut, as_json: bool, what: str) -> None:
    if as_json:
        print_json(m)
    else:
        say(what)
        show_model(m)


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """The project's models."""
    with client() as c:
        models = c.models.list()
    if as_json:
        print_json(models)
        return
    table = Table("name", "versions", "serving", "pinned", "aliases", "best val acc", title=f"{len(models)} models")
    for m in models:
        best = max((v.val_accuracy for v in m.versions if v.val_accuracy is not None), default=None)
        table.add_row(
            plain(m.name),
            str(len(m.versions)),
            f"v{m.serving_version}" if m.serving_version else "-",
            f"v{m.pinned_version}" if m.pinned_version else "-",
            plain(aliases(m)),
            pct(best),
        )
    console.print(table)


@app.command()
def show(name: str, as_json: JsonOpt = False) -> None:
    """A model's versions, which one serves, its pin and aliases."""
    with client() as c:
        model = c.models.get(name)
    emit(model, as_json, lambda: show_model(model))


@app.command()
def promote(name: str, version: int, backend: BackendOpt = None, as_json: JsonOpt = False) -> None:
    """Pin a version: /predict serves it until unpinned."""
    with client() as c:
        done(c.models.promote(name, version, backend), as_json, f"{name}: pinned version {version}")


@app.command()
def unpin(name: str, as_json: JsonOpt = False) -> None:
    """Serve the best version again."""
    with client() as c:
        done(c.models.unpin(name), as_json, f"{name}: unpinned")


@app.command()
def alias(name: str, alias: str, version: int, backend: BackendOpt = None, as_json: JsonOpt = False) -> None:
    """Point an alias (e.g. production) at a version; predict with --model NAME@ALIAS."""
    with client() as c:
        done(c.models.set_alias(name, alias, version, backend), as_json, f"{name}@{alias} → version {version}")


@app.command()
def rollback(
    name: str,
    alias: Annotated[str | None, typer.Option(help="Roll this alias back instead of the pin")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Move the pin (or an alias) back to where its latest change moved it from."""
    with client() as c:
        done(c.models.rollback(name, alias), as_json, f"{name}: rolled back {'@' + alias if alias else 'the pin'}")
