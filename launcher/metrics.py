"""The launchers' part in prometheus_client's multiprocess mode: claim this launcher's metrics directory before
any metric exists and hand it to every process it starts (PROMETHEUS_MULTIPROC_DIR); optionally serve the
directory's metrics on a port of its own (`visiontune worker` on a host the API cannot see).

Metrics are optional: a directory that cannot be used (no flock on that filesystem, read-only, a foreign folder)
is logged as a warning and the launcher goes on with single-process metrics (each process its own registry)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from app.config import Settings
from app.monitoring.multiproc import MULTIPROC_ENV, claim, private_dir

log = logging.getLogger("visiontune.metrics")


def prepare_metrics_dir(settings: Settings, role: str) -> Path | None:
    """This launcher's (emptied) metrics directory, exported to its children; one a launcher above this one (or
    the operator) chose is kept as it is. None when no directory could be claimed: single-process metrics."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        return Path(given)
    root = settings.resolved_metrics_dir()
    try:
        if settings.metrics_dir is None:  # the default, under the shared temporary directory: this user's only
            private_dir(root.parent)
        root = root.resolve()
        directory = claim(root, role)
    except OSError as exc:
        log.warning(
            "metrics: cannot use the metrics directory %s (%s: %s); this %s's processes keep single-process "
            "metrics (each its own numbers in /metrics). Set VISIONTUNE_METRICS_DIR to a writable folder on a "
            "local filesystem",
            root,
            exc.__class__.__name__,
            exc,
            role,
        )
        return None
    os.environ["VISIONTUNE_METRICS_DIR"] = str(root)  # the API processes add up this root's subdirectories
    os.environ[MULTIPROC_ENV] = str(directory)
    log.info("metrics of this %s's processes in %s", role, directory)
    return directory


def serve_metrics(directory: Path | None, host: str, port: int) -> None:
    """Serve the metrics of the processes writing to directory on host:port (a daemon thread; no key)."""
    if directory is None:
        log.warning("metrics: no metrics directory, so no worker metrics on port %s", port)
        return
    from prometheus_client import CollectorRegistry, start_http_server

    from app.monitoring.scrape import ProcessFiles

    registry = CollectorRegistry(auto_describe=False)
    # The files of this launcher's directory, merged as /metrics merges them: an unreadable file is skipped.
    registry.register(ProcessFiles(None, own=directory))
    start_http_server(port, addr=host, registry=registry)
    log.info("worker metrics on http://%s:%s/metrics", host, port)
