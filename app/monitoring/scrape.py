"""One scrape: this process's metrics (or, in multiprocess mode, every process's files under the metrics root)
plus the scrape-time collectors, in Prometheus's text format."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.monitoring.multiproc import metric_files, multiprocess_dir

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ProcessFiles(Collector):
    """The metrics every process wrote under root (multiprocess mode), added up as prometheus_client does."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def collect(self) -> Iterable[Metric]:
        return MultiProcessCollector.merge(metric_files(self.root), accumulate=True)


class ThisProcess(Collector):
    """The default registry of this process (single-process mode: tests, or an API started without a launcher)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render(root: Path | None, collectors: Iterable[Collector] = ()) -> bytes:
    """The text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProcessFiles(root) if multiprocess_dir() is not None else ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
