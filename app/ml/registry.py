"""A registry of named entries (training strategies, architectures), in the spirit of timm's model registry.

Each entry lives in a module of its own; the package that owns a registry lists its entries once, in the order
the API documents them. Looking up a name that nobody registered is an error naming every valid choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar


class Entry(Protocol):
    """What a registry needs of an entry: its name, how it is shown, and which names it answers to."""

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str:
        """The name as documented (a family of names shows a placeholder, e.g. `timm/<name>`)."""
        ...

    def accepts(self, name: str) -> bool:
        """Whether `name` designates this entry."""
        ...


E = TypeVar("E", bound=Entry)


def human_join(words: Iterable[str], last: str = "or") -> str:
    """'a, b or c'."""
    items = list(words)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


class Registry(Generic[E]):
    """Entries by name, in registration order; `get` raises `error` for a name no entry accepts."""

    def __init__(self, kind: str, error: type[ValueError], entries: Iterable[E] = ()) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, E] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: E) -> E:
        """Add an entry; a second entry with the same name is a programming error."""
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str) -> E:
        """The entry for `name` (exact names first, then families), or `error` listing the choices."""
        entry = self._entries.get(name)
        if entry is not None and entry.accepts(name):
            return entry
        for candidate in self._entries.values():
            if candidate.accepts(name):
                return candidate
        raise self.error(f"unknown {self.kind} {name[:100]!r}: use {self.choices()}")

    def choices(self) -> str:
        """Every documented name, e.g. 'linear, partial, full or lora'."""
        return human_join(self.labels())

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def labels(self) -> tuple[str, ...]:
        return tuple(entry.label for entry in self._entries.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(e.accepts(name) for e in self._entries.values())

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
