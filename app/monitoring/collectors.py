"""What /metrics reads at scrape time rather than from the processes' files: the jobs in SQL by status and the
broker's queue depth. Each is one cheap query (a GROUP BY on an indexed column; LLENs in one round trip) and never
fails a scrape: an unreachable database or broker leaves its numbers out and says so in an `_up` gauge."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.models import Job, JobStatus
from app.queue import PRIORITY_STEPS, RESENT_PRIORITY, queue_lengths, unacked_count

log = logging.getLogger("visiontune.metrics")

# The metric families these collectors export (the dashboard test checks its queries against them).
SCRAPE_TIME_METRICS = (
    "visiontune_jobs",
    "visiontune_database_up",
    "visiontune_queue_messages",
    "visiontune_queue_unacked_messages",
    "visiontune_broker_up",
)
PRIORITY_NAMES = {RESENT_PRIORITY: "resent"} | {p: "new" for p in PRIORITY_STEPS if p != RESENT_PRIORITY}


class JobsByStatus(Collector):
    """visiontune_jobs{status}: jobs of every project by status, counted in SQL at scrape time."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("visiontune_database_up", "1 when /metrics could count the jobs in the database")
        try:
            with self.factory() as session:
                rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot count jobs (%s)", exc.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        counts = {str(status): int(n) for status, n in rows}
        jobs = GaugeMetricFamily("visiontune_jobs", "Jobs by status (every project)", labels=["status"])
        for known in JobStatus:
            jobs.add_metric([str(known)], counts.pop(str(known), 0))
        for other, n in sorted(counts.items()):  # a status this code does not know (a newer writer)
            jobs.add_metric([other], n)
        up.add_metric([], 1)
        yield jobs
        yield up


class QueueDepth(Collector):
    """visiontune_queue_messages{queue,priority}: training/export tasks waiting in the broker (Redis lists)."""

    def __init__(self, broker_url: str, queue: str, timeout_s: float = 1.0) -> None:
        self.queue = queue
        self.client = redis.Redis.from_url(broker_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("visiontune_broker_up", "1 when /metrics could read the broker's queue")
        try:
            lengths = queue_lengths(self.client, self.queue)
            unacked = unacked_count(self.client)
        except redis.RedisError as exc:
            log.warning("metrics: cannot read the broker's queue (%s)", exc.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        depth = GaugeMetricFamily(
            "visiontune_queue_messages",
            "Tasks waiting in the broker's queue, by priority (resent: a resumed or re-sent job, served first)",
            labels=["queue", "priority"],
        )
        for priority, n in lengths.items():
            depth.add_metric([self.queue, PRIORITY_NAMES[priority]], n)
        yield depth
        yield GaugeMetricFamily(
            "visiontune_queue_unacked_messages",
            "Tasks delivered to workers and not yet acknowledged (running), every queue of the broker",
            value=unacked,
        )
        up.add_metric([], 1)
        yield up

    def close(self) -> None:
        self.client.close()
