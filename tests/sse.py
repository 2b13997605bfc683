"""Reading a text/event-stream in tests: the events of an SSE body, line by line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: dict[str, Any]


def sse_events(lines: Iterable[str]) -> Iterator[SseEvent]:
    """The events in a stream of lines (comments skipped), each as soon as its blank line arrives."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                yield SseEvent(fields.get("id"), fields.get("event"), json.loads(fields["data"]))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
