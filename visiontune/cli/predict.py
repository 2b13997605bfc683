"""`visiontune predict IMAGE...`: the top-k labels of each image, as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from visiontune.cli.common import JsonOpt, client, console, plain, print_json


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, WebP)")],
    model: Annotated[str | None, typer.Option(help="NAME or NAME@ALIAS [default: the default model]")] = None,
    version: Annotated[int | None, typer.Option(help="A specific version instead of the serving one")] = None,
    top_k: Annotated[int, typer.Option(help="Labels per image")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Classify images with the serving version of a model."""
    with client() as c:
        result = c.predict(images, model, version=version, top_k=top_k)
    if as_json:
        print_json(result)
        return
    title = plain(f"{result.model_name} version {result.version} ({result.arch}, {result.backend})")
    table = Table("image", "label", "probability", "", title=title)
    for pred in result.predictions:
        for rank, score in enumerate(pred.top):
            bar = "█" * round(20 * score.probability)
            name: Text | str = plain(pred.filename) if rank == 0 else ""
            table.add_row(name, plain(score.label), f"{score.probability:.3f}", bar)
        table.add_section()
    console.print(table)
