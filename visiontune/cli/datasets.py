"""`visiontune datasets upload|list|show|delete`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Column, Table
from rich.text import Text

from app.schemas import DatasetOut
from visiontune.cli.common import ID, JsonOpt, client, console, emit, plain, print_json, say, when

app = typer.Typer(help="Upload and manage datasets.", no_args_is_help=True)

CHECKING = "processing on the server… (every image is opened and checked)"


def show_dataset(d: DatasetOut) -> None:
    console.print(Text.assemble((d.name, "bold"), f"  {d.id}"), soft_wrap=True)
    console.print(
        f"{d.format}, {d.num_classes} classes, {d.num_images} images, {d.size_bytes:,} bytes, "
        f"created {when(d.created_at)}",
        markup=False,
        highlight=False,
    )
    table = Table("split", *(Column(header=plain(name)) for name in d.class_names), "total")
    for split, counts in d.split_counts.items():
        table.add_row(plain(split), *(str(counts.get(c, 0)) for c in d.class_names), str(sum(counts.values())))
    console.print(table)
    for item in d.invalid_files[:20]:
        say(f"left out: {item}")


@app.command()
def upload(
    path: Annotated[Path, typer.Argument(help="A folder in ImageFolder layout (zipped here), or a .zip/.tar.gz")],
    name: Annotated[str | None, typer.Option(help="The dataset's name [default: the folder's or file's]")] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Leave unreadable images out instead of refusing")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Upload a dataset, with a progress bar while the bytes go out."""
    with client() as c:
        if as_json:
            print_json(c.datasets.upload(path, name, skip_invalid=skip_invalid))
            return
        columns = (
            TextColumn("uploading"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(Progress(*columns, console=console))
            task = bar.add_task("upload", total=None)
            checking: list[bool] = []

            def sent(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)
                if done >= total and not checking:  # every byte is out: the server now checks each image
                    checking.append(True)
                    bar.stop()
                    if console.is_terminal:
                        stack.enter_context(console.status(CHECKING))
                    else:
                        console.print(CHECKING, markup=False, highlight=False)

            dataset = c.datasets.upload(path, name, skip_invalid=skip_invalid, on_progress=sent)
        show_dataset(dataset)


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(help="At most this many")] = 50,
    offset: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """The project's datasets, newest first."""
    with client() as c:
        page = c.datasets.list(limit=limit, offset=offset)
    if as_json:
        print_json(page)
        return
    table = Table(ID, "name", "format", "classes", "images", "created", title=f"{page.total} datasets")
    for d in page.items:
        counts = (str(d.num_classes), str(d.num_images))
        table.add_row(str(d.id), plain(d.name), plain(d.format), *counts, when(d.created_at))
    console.print(table)


@app.command()
def show(dataset_id: str, as_json: JsonOpt = False) -> None:
    """A dataset's classes and image counts per split."""
    with client() as c:
        dataset = c.datasets.get(dataset_id)
    emit(dataset, as_json, lambda: show_dataset(dataset))


@app.command()
def delete(dataset_id: str, as_json: JsonOpt = False) -> None:
    """Delete a dataset and its files (refused while a queued or running job uses it)."""
    with client() as c:
        c.datasets.delete(dataset_id)
    if as_json:
        print_json({"deleted": dataset_id})
    else:
        say(f"Deleted dataset {dataset_id}.")
