"""One scrape: this process's metrics (or, in multiprocess mode, every process's files under the metrics root)
plus the scrape-time collectors, in Prometheus's text format."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.monitoring.multiproc import metric_files, multiprocess_dir

CONTENT_TYPE = CONTENT_TYPE_LATEST

log = logging.getLogger("visiontune.metrics")


def readable(files: list[str]) -> list[str]:
    """The files prometheus_client can read, each tried alone (after a merge of all of them failed); the others
    are logged and left out."""
    good: list[str] = []
    for f in files:
        try:
            MultiProcessCollector.merge([f], accumulate=True)
        except Exception as exc:  # a truncated or corrupt file, one removed by a sweeper mid-scrape
            log.warning("metrics: skipping unreadable metrics file %s (%s: %s)", f, exc.__class__.__name__, exc)
        else:
            good.append(f)
    return good


class ProcessFiles(Collector):
    """The metrics every process wrote under root (multiprocess mode), added up as prometheus_client does. A file
    that cannot be read is left out of the sum rather than failing the scrape, and counted in
    visiontune_metrics_unreadable_files. `own` is this process's directory (default: PROMETHEUS_MULTIPROC_DIR)."""

    def __init__(self, root: Path | None, own: Path | None = None) -> None:
        self.root = root
        self.own = own

    def collect(self) -> Iterator[Metric]:
        files = metric_files(self.root, self.own)
        try:
            merged = list(MultiProcessCollector.merge(files, accumulate=True))
            skipped = 0
        except Exception:
            good = readable(files)
            try:
                merged = list(MultiProcessCollector.merge(good, accumulate=True))
            except Exception as exc:  # a file went bad between the two reads: answer with the rest
                log.warning("metrics: cannot merge the metrics files (%s: %s)", exc.__class__.__name__, exc)
                merged, good = [], []
            skipped = len(files) - len(good)
        yield from merged
        yield GaugeMetricFamily(
            "visiontune_metrics_unreadable_files",
            "Metrics files this scrape could not read and left out of the sums (see the API's log)",
            value=skipped,
        )


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
