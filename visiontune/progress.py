"""A job's events shown to a person: rich progress bars (epochs, and steps with loss, images/s and ETA) on a
terminal; one line per change elsewhere (logs, CI, pipes), so the output stays readable as text."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from visiontune.events import JobEvent

PLAIN_PROGRESS_EVERY = 5.0  # off a terminal: a progress line at most this often (and at each epoch's start)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def pct(value: Any) -> str:
    """`87.5%` from a fraction; `-` for a missing (or not numeric) value."""
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "-"


def _num(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def progress_text(data: dict[str, Any]) -> str:
    """`loss 0.4120 · 612 img/s · ETA 2:21` from a progress event's data."""
    return (
        f"loss {_num(data.get('loss'))} · {_num(data.get('images_per_second'), '.0f')} img/s · "
        f"ETA {format_eta(data.get('eta_seconds'))}"
    )


def progress_line(data: dict[str, Any]) -> str:
    """`epoch 2/10 step 37/58 · loss ... · ETA ...`"""
    where = f"epoch {data.get('epoch')}/{data.get('epochs')} step {data.get('step')}/{data.get('steps')}"
    return f"{where} · {progress_text(data)}"


def epoch_text(data: dict[str, Any], epochs: int | None) -> str:
    of = f"/{epochs}" if epochs else ""
    return (
        f"epoch {data.get('epoch')}{of} done: train loss {_num(data.get('train_loss'))} "
        f"acc {pct(data.get('train_accuracy'))} · val loss {_num(data.get('val_loss'))} "
        f"acc {pct(data.get('val_accuracy'))} · {_num(data.get('seconds'), '.1f')} s"
    )


def status_text(data: dict[str, Any]) -> str:
    text = f"status: {data.get('status')}"
    if data.get("attempt"):
        text += f" (attempt {data['attempt']})"
    if data.get("error"):
        text += f" — {data['error']}"
    return text


def event_text(event: JobEvent, epochs: int | None = None) -> str:
    """One line for an event: a status change, an epoch's results (of `epochs`, when known), a training step; the
    JSON data of any other type."""
    if event.type == "status":
        return status_text(event.data)
    if event.type == "epoch":
        return epoch_text(event.data, epochs)
    if event.type == "progress":
        return progress_line(event.data)
    return json.dumps(event.data)


class JobProgress:
    """Feed it a job's events (`handle`); use as a context manager around the stream."""

    def __init__(
        self, console: Console, epochs: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console = console
        self.epochs = epochs
        self.clock = clock
        self.live = console.is_terminal
        self._progress: Progress | None = None
        self._epochs_task: TaskID | None = None
        self._steps_task: TaskID | None = None
        self._epoch_shown: int | None = None
        self._last_line = -float("inf")

    def __enter__(self) -> JobProgress:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),  # from the server's events: never markup
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}", markup=False),
                console=self.console,
            )
            self._progress.start()
            self._epochs_task = self._progress.add_task("epochs", total=self.epochs, info="")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def print(self, text: str) -> None:
        (self._progress.console if self._progress else self.console).print(
            text, markup=False, highlight=False, soft_wrap=True
        )

    def handle(self, event: JobEvent) -> None:
        """A status or an epoch: its line (event_text), and the epochs bar moves; a progress step: the steps bar,
        or off a terminal its line now and then. Other event types are not shown."""
        if event.type == "progress":
            self._on_progress(event)
        elif event.type in ("status", "epoch"):
            self.print(event_text(event, self.epochs))
            if event.type == "epoch" and self._progress is not None and self._epochs_task is not None:
                self._progress.update(self._epochs_task, completed=event.data.get("epoch", 0))

    def _on_progress(self, event: JobEvent) -> None:
        data = event.data
        epoch, epochs = data.get("epoch"), data.get("epochs")
        if isinstance(epochs, int):
            self.epochs = epochs
        if self._progress is None:
            now = self.clock()
            if epoch != self._epoch_shown or now - self._last_line >= PLAIN_PROGRESS_EVERY:
                self._epoch_shown, self._last_line = epoch, now
                self.print(event_text(event))
            return
        assert self._epochs_task is not None
        self._progress.update(self._epochs_task, total=epochs, info=f"ETA {format_eta(data.get('eta_seconds'))}")
        if epoch != self._epoch_shown:
            self._epoch_shown = epoch
            if self._steps_task is not None:
                self._progress.remove_task(self._steps_task)
            self._steps_task = self._progress.add_task(f"epoch {epoch}/{epochs}", total=data.get("steps"), info="")
        assert self._steps_task is not None
        self._progress.update(
            self._steps_task, completed=data.get("step", 0), total=data.get("steps"), info=progress_text(data)
        )
