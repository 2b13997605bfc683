"""`visiontune jobs submit|list|show|cancel|events|follow`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table
from rich.text import Text

from app.schemas import JobDetail
from visiontune.cli.common import ID, JsonOpt, client, console, emit, follow, plain, print_json, say, when
from visiontune.errors import ClientError
from visiontune.events import JobEvent
from visiontune.progress import event_text, pct

app = typer.Typer(help="Submit, follow and manage fine-tuning jobs.", no_args_is_help=True)

FollowOpt = Annotated[
    bool, typer.Option("--follow", "-f", help="Show progress until the job ends; exit 3 if it fails, 4 if canceled")
]
TimeoutOpt = Annotated[float | None, typer.Option(help="With --follow: stop waiting after this many seconds (exit 5)")]


def read_spec(path: Path) -> dict[str, Any]:
    """A job file: YAML (or JSON) mapping of POST /jobs fields."""
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ClientError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ClientError(f"{path}: not valid YAML: {exc}") from None
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ClientError(f"{path}: a job file is a mapping of fields (dataset_id: ..., epochs: ...)")
    return spec


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values read as YAML scalars or lists (3 -> int, true -> bool, [onnx] -> list)."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ClientError(f"--set {pair!r}: expected key=value")
        try:
            fields[key.strip()] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            fields[key.strip()] = value
    return fields


@app.command()
def submit(
    file: Annotated[Path | None, typer.Option("--file", help="A YAML/JSON file of job fields")] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset_id")] = None,
    model_name: Annotated[str | None, typer.Option(help="The model this job trains a version of")] = None,
    arch: Annotated[str | None, typer.Option(help="e.g. resnet18, efficientnet_lite0, timm/<name>")] = None,
    weights: Annotated[str | None, typer.Option(help="imagenet or none")] = None,
    strategy: Annotated[str | None, typer.Option(help="linear, partial, full or lora")] = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", "--lr")] = None,
    image_size: int | None = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Any other field (repeat); wins over the rest"),
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe submission")] = None,
    follow_: FollowOpt = False,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a fine-tuning job: fields from --file, then the options, then --set."""
    spec = read_spec(file) if file else {}
    flags = {
        "dataset_id": dataset,
        "model_name": model_name,
        "arch": arch,
        "weights": weights,
        "strategy": strategy,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "image_size": image_size,
    }
    spec.update({k: v for k, v in flags.items() if v is not None})
    spec.update(parse_sets(set_ or []))
    with client() as c:
        job = c.jobs.submit(spec, idempotency_key=idempotency_key)
        if not follow_:
            if as_json:
                print_json(job.detail)
            else:
                console.print(
                    f"job {job.id} {job.status} ({job.detail.arch}, {job.detail.strategy}, "
                    f"model {job.detail.model_name})",
                    markup=False,
                    highlight=False,
                )
            return
        if not as_json:
            say(f"job {job.id} submitted")
        follow(job, as_json, timeout)


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed or canceled")] = None,
    limit: int = 50,
    offset: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """The project's jobs, newest first."""
    with client() as c:
        page = c.jobs.list(status=status, limit=limit, offset=offset)
    if as_json:
        print_json(page)
        return
    table = Table(ID, "status", "model", "arch", "strategy", "best epoch", "created", title=f"{page.total} jobs")
    for j in page.items:
        best = str(j.best_epoch) if j.best_epoch is not None else "-"
        names = (plain(j.status), plain(j.model_name), plain(j.arch), plain(j.strategy))
        table.add_row(str(j.id), *names, best, when(j.created_at))
    console.print(table)


def show_job(j: JobDetail) -> None:
    console.print(Text.assemble((f"job {j.id}", "bold"), f"  {j.status}"), soft_wrap=True)
    lines = [
        f"model {j.model_name}" + (f" version {j.model_version}" if j.model_version else ""),
        f"{j.arch} ({j.weights}), {j.strategy}, attempt {j.attempt}/{j.max_attempts}",
        f"created {when(j.created_at)}, started {when(j.started_at)}, finished {when(j.finished_at)}",
    ]
    if j.error:
        lines.append(f"error: {j.error}")
    for line in lines:
        say(line)
    if j.epochs:
        table = Table("epoch", "train loss", "train acc", "val loss", "val acc", "lr", "seconds", "img/s")
        for e in j.epochs:
            mark = " *" if e.epoch == j.best_epoch else ""
            val_loss = f"{e.val_loss:.4f}" if e.val_loss is not None else "-"
            lr, secs, rate = f"{e.learning_rate:.2e}", f"{e.seconds:.1f}", f"{e.images_per_second:.0f}"
            row = (f"{e.epoch}{mark}", f"{e.train_loss:.4f}", pct(e.train_accuracy), val_loss, pct(e.val_accuracy))
            table.add_row(*row, lr, secs, rate)
        console.print(table)
    for split, metrics in (("val", j.val_metrics), ("test", j.test_metrics)):
        if metrics and isinstance(metrics.get("accuracy"), int | float):
            console.print(
                f"{split} accuracy {pct(metrics['accuracy'])} (best checkpoint)",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )


@app.command()
def show(job_id: str, as_json: JsonOpt = False) -> None:
    """A job's status, epochs and metrics."""
    with client() as c:
        job = c.jobs.get(job_id)
    emit(job, as_json, lambda: show_job(job))


@app.command()
def cancel(job_id: str, as_json: JsonOpt = False) -> None:
    """Cancel a queued job, or stop a running one within a batch."""
    with client() as c:
        job = c.jobs.cancel(job_id)
    if as_json:
        print_json(job)
    else:
        state = "cancel requested" if job.status == "running" else job.status
        say(f"job {job.id} {state}")


def event_line(event: JobEvent) -> str:
    return f"{event.id or '-':<17} {event.type:<8} {event_text(event)}"


@app.command()
def events(
    job_id: str,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends")] = False,
    last_event_id: Annotated[str | None, typer.Option(help="Start after this event id")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event per line (JSON Lines).")] = False,
) -> None:
    """A job's events (status, progress, epoch) so far; with --follow, live until it ends."""
    with client() as c:
        for event in c.jobs.events(job_id, last_event_id, follow=follow_):
            if as_json:
                print_json(event.to_json(), indent=None)
            else:
                say(event_line(event))


@app.command("follow")
def follow_command(job_id: str, timeout: TimeoutOpt = None, as_json: JsonOpt = False) -> None:
    """Show an existing job's progress until it ends (exit codes as submit --follow)."""
    with client() as c:
        follow(c.jobs.job(job_id), as_json, timeout)
