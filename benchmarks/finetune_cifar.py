"""Benchmark: each fine-tuning strategy run by the service versus the plain PyTorch loop a tutorial would write.

Scenarios
---------
All on the real CIFAR-10 subset (4 training batches = 4,068 images, a test batch of 1,017), EfficientNet-Lite0
with the ImageNet weights shipped offline, a fresh 10-class head, AdamW, seed 0. Each scenario is one service
job and, except ``recipe``, its plain-loop twin with the same model, strategy, image size, epochs, batch size,
learning rate and augmentation:

============  ========================================================  =========================================
scenario      job                                                       targets
============  ========================================================  =========================================
``linear``    frozen backbone, 224 px, 5 epochs, batch 64, lr 1e-3      total s plain/service >= 3; test accuracy
              constant, weight decay 0.01 (as the plain loop); the      within 1 point of the plain loop; >= 0.85
              service caches the backbone's features
``partial``   last 2 stages + head, ``basic`` augmentation, 96 px,      service mean s/epoch <= plain loop's
              1 epoch, batch 64, lr 1e-3
``full``      as ``partial`` with every layer training                  service mean s/epoch <= plain loop's
``recipe``    service only: partial, 4 stages, 224 px, 5 epochs,        test accuracy >= 0.90; also reports the
              batch 32, lr 1e-3, label smoothing 0.1, ``basic``,        accuracy before fine-tuning (the job's
              head first probed for 5 epochs on cached features         ``baseline_metrics``)
              (LP-FT); any field can be set with ``--recipe-json``
============  ========================================================  =========================================

The timing jobs run with ``baseline: false`` (no before-fine-tuning pass); ``recipe`` keeps it on, because what
fine-tuning bought is part of its report (its total time includes that pass).

The two sides
-------------
* **service** -- the job goes through the production code path: the dataset is ingested once from a
  ``.tar.gz`` upload (``ingest_upload``) into a data directory and a migrated SQLite database, and every job
  reuses it; each job is submitted with ``submit_job`` and trained by ``worker.runner.JobRunner.run`` (leases,
  checkpoints, epoch rows, model registry). Per-epoch seconds are the ``seconds`` of the Epoch rows the runner
  wrote: the training pass plus the validation pass over the 10% hold-out (for ``linear``, the first epoch also
  carries the one-time feature extraction of train and hold-out, and later epochs train the head on cached
  features). The total is the wall time of ``run()``: model build, data loading, every epoch, the test pass,
  checkpoints, SQL.
* **plain loop** (``benchmarks/_plain_loops.py``) -- the textbook loop: a ``Dataset`` that runs torchvision
  transforms on a PIL image per item, a ``DataLoader``, fp32 NCHW, AdamW on the trainable parameters at a
  constant lr (torch's default weight decay), CrossEntropy; ``partial`` trains the parameters of the last
  ``unfreeze_stages`` entries of ``BuiltModel.stages`` plus the head, with ``RandomResizedCrop`` (the service's
  scale 0.35-1) + flip, in ``model.train()``. Its total covers reading the data, building the model, every
  epoch and the test pass.

Fairness. Both sides train on the same stratified 90% of the training images (``stratified_split`` with the
job's seed, as the service does) and, every epoch, score the same 10% hold-out: the plain loop's epoch time is
its training pass plus that accuracy pass (both are in the JSON separately), so an epoch is the same work on
both sides. The plain loop scores its last epoch on the test batch; the service its best epoch on the hold-out.

The ``linear`` twin keeps the frozen backbone in eval mode (``model.eval()`` then ``head.train()``), as a
careful tutorial does. This makes the baseline stronger, not weaker: with a bare ``model.train()`` the frozen
BatchNorm layers normalise with batch statistics and their running statistics drift towards upsampled CIFAR,
and the same loop reached only 73.4% test accuracy (measured earlier in this project) against the service's
~86%. The ``partial`` / ``full`` twins use ``model.train()`` as tutorials do; for ``partial`` that alone costs
the plain loop about 6 points after one epoch (measured: 68.2% against 74.3% with the frozen BatchNorm layers
in eval mode, mean of 4 seeds), which is the service's whole accuracy lead there.

Differences kept on purpose, because they are each side's defaults (except in ``linear``, whose job takes the
plain loop's constant lr and weight decay 0.01, so that its accuracy check compares feature caching and the
service's best-epoch choice with the plain loop, and not two optimizer settings):
the service uses a cosine schedule, weight decay 1e-4 off norms and biases, discriminative learning rates for
partial/full (lr x 0.9 per stage below the head), frozen BatchNorm layers in eval mode, channels-last tensors
and small inference batches on a CPU; the plain loop a constant lr, AdamW's default weight decay 0.01, one lr
for everything.

Order. Scenarios run in the order given (default ``linear,partial,full,recipe``); within a scenario the service
job runs first and its plain twin right after, so that each pair sees the same machine conditions (the 1-minute
load average before and after every run is in the JSON). The first job pays the process's one-time warm-up
(weights from disk, oneDNN kernels), which counts against the service.

Seeds. ``--seeds 0,1,2`` runs every chosen scenario once per seed (the job's seed, used by both sides: it
picks the hold-out, initialises the head and orders the batches). The accuracy targets (linear's and recipe's
floors, linear's 1-point tolerance) are judged on the mean over the seeds, the speed targets on every run: the
test batch alone has a standard error of about 1.1 points at 86%, and which epoch scores best on a 406-image
hold-out moves with the seed, so one seed cannot settle a 1-point tolerance, nor whether a recipe that
averages 91% clears 90%. The JSON's ``over_seeds`` holds each seed's accuracies and the means.

Run from the repository root::

    .venv/bin/python benchmarks/finetune_cifar.py                  # full run: ~35-45 min on a quiet 2-core CPU
    .venv/bin/python benchmarks/finetune_cifar.py --quick          # smoke run: 200/200 images, 64 px, 1 epoch
    .venv/bin/python benchmarks/finetune_cifar.py --scenarios linear --seeds 0,1,2,3   # ~20 min per seed
    .venv/bin/python benchmarks/finetune_cifar.py --scenarios recipe --recipe-json '{"unfreeze_stages": 3}'

Results are printed as a table and written as JSON to ``benchmarks/results/`` (git-ignored; rewritten after
each scenario, so an interrupted run keeps what finished). The script exits 0 whether or not the targets hold;
it exits non-zero only when something crashed (including a service job that did not succeed; its plain twin is
then skipped).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torchvision  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from app.auth import cli_actor  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import make_engine, make_sessionmaker, session_scope  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.models import Epoch, Job  # noqa: E402
from app.schemas import JobCreate  # noqa: E402
from app.services.datasets import ingest_upload  # noqa: E402
from app.services.jobs import submit_job  # noqa: E402
from benchmarks._bench_common import (  # noqa: E402
    EpochTiming,
    RunResult,
    load_average,
    load_cifar,
    tar_cifar_dir,
    write_subset_dir,
)
from benchmarks._plain_loops import check_supported, run_plain  # noqa: E402
from worker.runner import JobRunner  # noqa: E402

DEFAULT_CIFAR = REPO_ROOT.parent / "shared" / "data" / "cifar10-subset" / "cifar-10-batches-py"
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "finetune_cifar.json"
QUICK_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "finetune_cifar_quick.json"

LINEAR_ACCURACY_TARGET = 0.85
RECIPE_ACCURACY_TARGET = 0.90
LINEAR_SPEEDUP_TARGET = 3.0  # plain total s / service total s
LINEAR_ACCURACY_TOLERANCE = 0.01  # |service - plain| test accuracy
# The test-accuracy floors, judged on the mean over the seeds run (a failed job counts as 0).
ACCURACY_TARGETS = {"linear": LINEAR_ACCURACY_TARGET, "recipe": RECIPE_ACCURACY_TARGET}

# What every job shares; the scenarios below add their own fields (all are JobCreate fields).
COMMON_REQUEST: dict[str, Any] = {
    "arch": "efficientnet_lite0",
    "weights": "imagenet",
    "batch_size": 64,
    "learning_rate": 1e-3,
    "val_fraction": 0.1,
    "seed": 0,
    "baseline": False,
}
# The linear pair also shares the optimizer settings (the plain loop's constant lr and AdamW weight decay 0.01,
# set here as job fields), so that its accuracy check compares feature caching with recomputing features, plus
# the one thing the service adds: it serves its best epoch by hold-out accuracy, the plain loop its last.
LINEAR_REQUEST = {
    **COMMON_REQUEST,
    "strategy": "linear",
    "image_size": 224,
    "epochs": 5,
    "augmentation": "none",
    "schedule": "constant",
    "weight_decay": 0.01,
}
PARTIAL_REQUEST = {
    **COMMON_REQUEST,
    "strategy": "partial",
    "unfreeze_stages": 2,
    "augmentation": "basic",
    "image_size": 96,
    "epochs": 1,
}
FULL_REQUEST = {**COMMON_REQUEST, "strategy": "full", "augmentation": "basic", "image_size": 96, "epochs": 1}
RECIPE_REQUEST = {
    **COMMON_REQUEST,
    "strategy": "partial",
    "unfreeze_stages": 4,
    "image_size": 224,
    "epochs": 5,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "label_smoothing": 0.1,
    "augmentation": "basic",
    "probe_epochs": 5,
    "baseline": True,
}
SCENARIO_REQUESTS = {
    "linear": LINEAR_REQUEST,
    "partial": PARTIAL_REQUEST,
    "full": FULL_REQUEST,
    "recipe": RECIPE_REQUEST,
}
SERVICE_ONLY = frozenset({"recipe"})
QUICK_OVERRIDES = {"image_size": 64, "epochs": 1}
QUICK_LIMITS = (200, 200)  # train, test images

log = logging.getLogger("visiontune.bench")


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Scenario:
    """One job request (validated, dataset id filled in later) and whether it has a plain-loop twin.

    label names the run in the table and the JSON: the scenario's name, plus its seed when several seeds run.
    """

    name: str
    request: JobCreate
    plain_twin: bool
    label: str

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "request": self.request.model_dump(mode="json", exclude={"dataset_id"}),
            "plain_twin": self.plain_twin,
        }


@dataclass(frozen=True)
class BenchConfig:
    cifar_dir: Path
    quick: bool
    scenarios: tuple[Scenario, ...]
    seeds: tuple[int, ...] = (0,)
    train_limit: int | None = None  # first N training images (quick mode)
    test_limit: int | None = None  # first N test images (quick mode)
    # num_workers=0 for the plain loop: the machine this targets has 2 cores, and torch's intra-op threads
    # already use both; loader worker processes would compete with them (the service picks 0 too for arrays).
    plain_num_workers: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "cifar_dir": str(self.cifar_dir),
            "quick": self.quick,
            "seeds": list(self.seeds),
            "train_limit": self.train_limit,
            "test_limit": self.test_limit,
            "plain_num_workers": self.plain_num_workers,
            "order": [s.label for s in self.scenarios],
        }


def make_scenario(
    name: str, recipe_overrides: dict[str, Any], quick: bool, seed: int = 0, several_seeds: bool = False
) -> Scenario:
    """The scenario's request with the CLI's overrides and the seed, validated by the API's own schema.

    The seed is the job's: it picks the stratified hold-out, initialises the head and orders the batches, on
    both sides of a pair.
    """
    fields = dict(SCENARIO_REQUESTS[name])
    if name == "recipe":
        fields.update(recipe_overrides)
    if quick:
        fields.update(QUICK_OVERRIDES)
    fields["seed"] = seed
    label = f"{name}/seed{seed}" if several_seeds else name
    request = JobCreate(dataset_id=uuid.UUID(int=0), model_name=f"bench-{label.replace('/', '-')}", **fields)
    plain_twin = name not in SERVICE_ONLY
    if plain_twin:
        check_supported(request)
    return Scenario(name, request, plain_twin, label)


# ---------------------------------------------------------------- the service path


class ServiceHarness:
    """A data directory, a migrated SQLite database and a runner; the dataset is ingested once for all jobs."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        url = f"sqlite:///{workdir / 'visiontune.db'}"
        upgrade(url)
        self.settings = Settings(data_dir=workdir / "data", database_url=url, lease_seconds=120)
        self.engine = make_engine(url)
        self.factory: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.runner = JobRunner(self.settings, self.factory, worker_id="bench")
        self.dataset_id: uuid.UUID | None = None
        self.ingest_seconds: float | None = None

    def ingest(self, cifar_dir: Path) -> uuid.UUID:
        archive = tar_cifar_dir(cifar_dir, self.workdir / "cifar-10-python.tar.gz")
        start = time.perf_counter()
        with session_scope(self.factory) as s, archive.open("rb") as stream:
            self.dataset_id = ingest_upload(s, self.settings, stream, archive.name, "cifar10-bench").id
        self.ingest_seconds = time.perf_counter() - start
        return self.dataset_id

    def run(self, scenario: Scenario) -> RunResult:
        """Submit the scenario's job on the ingested dataset and let the worker's runner train it."""
        assert self.dataset_id is not None, "ingest() first"
        request = scenario.request.model_copy(update={"dataset_id": self.dataset_id})
        with session_scope(self.factory) as s:
            job_id = submit_job(s, self.settings, cli_actor(), request, enqueue=lambda _job_id: None).id
        load_before = load_average()
        start = time.perf_counter()
        outcome = self.runner.run(job_id)
        seconds = time.perf_counter() - start
        result = read_service_result(self.factory, job_id, scenario, outcome, seconds)
        result.extra.update(load_average_before=load_before, load_average_after=load_average())
        return result

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def service_harness(workdir: Path, cifar_dir: Path) -> Iterator[ServiceHarness]:
    harness = ServiceHarness(workdir)
    try:
        harness.ingest(cifar_dir)
        yield harness
    finally:
        harness.close()


def baseline_test_accuracy(job: Job) -> float | None:
    test = (job.baseline_metrics or {}).get("test")
    return test.get("accuracy") if isinstance(test, dict) else None


def read_service_result(
    factory: sessionmaker[Session], job_id: uuid.UUID, scenario: Scenario, outcome: str, run_seconds: float
) -> RunResult:
    """The job row and its epoch rows, as the API would report them."""
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None
        rows = s.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)).all()
        epochs = [
            EpochTiming(
                epoch=r.epoch,
                seconds=r.seconds,
                train_loss=r.train_loss,
                train_accuracy=r.train_accuracy,
                val_accuracy=r.val_accuracy,
                images_per_second=r.images_per_second,
            )
            for r in rows
        ]
        test_metrics = job.test_metrics or {}
        return RunResult(
            scenario=scenario.label,
            side="service",
            strategy=job.strategy,
            image_size=scenario.request.image_size,
            epochs=epochs,
            total_seconds=run_seconds,
            test_accuracy=test_metrics.get("accuracy"),
            baseline_test_accuracy=baseline_test_accuracy(job),
            extra={
                "job_id": str(job.id),
                "outcome": outcome,
                "status": job.status,
                "error": job.error,
                "best_epoch": job.best_epoch,
                "val_accuracy": (job.val_metrics or {}).get("accuracy"),
                "test_count": test_metrics.get("count"),
                "baseline_metrics": job.baseline_metrics,
                "flops_per_image": job.flops_per_image,
            },
        )


# ---------------------------------------------------------------- comparison and targets


@dataclass
class Check:
    scenario: str
    description: str
    value: float | None
    passed: bool


@dataclass
class ScenarioResult:
    scenario: Scenario
    service: RunResult
    plain: RunResult | None
    checks: list[Check] = field(default_factory=list)

    @property
    def runs(self) -> list[RunResult]:
        return [self.service] if self.plain is None else [self.service, self.plain]

    def ratios(self) -> dict[str, float | None]:
        if self.plain is None:
            return {}
        s, p = self.service, self.plain
        return {
            "plain_over_service_mean_epoch_seconds": ratio(p.mean_epoch_seconds, s.mean_epoch_seconds),
            "plain_over_service_total_seconds": ratio(p.total_seconds, s.total_seconds),
            "service_minus_plain_test_accuracy": difference(s.test_accuracy, p.test_accuracy),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            **self.scenario.as_json(),
            "service": self.service.as_json(),
            "plain": self.plain.as_json() if self.plain is not None else None,
            "ratios": self.ratios(),
            "checks": [asdict(c) for c in self.checks],
        }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def at_least(value: float | None, threshold: float) -> bool:
    return value is not None and value >= threshold


def checks_for(result: ScenarioResult) -> list[Check]:
    """The issue's speed targets for this run (accuracy targets are judged over seeds: seed_checks)."""
    label, r = result.scenario.label, result.ratios()
    if result.scenario.name == "linear":
        total = r.get("plain_over_service_total_seconds")
        return [
            Check(
                label,
                f"plain/service total s >= {LINEAR_SPEEDUP_TARGET:g}",
                total,
                at_least(total, LINEAR_SPEEDUP_TARGET),
            )
        ]
    if result.scenario.name in ("partial", "full"):
        per_epoch = r.get("plain_over_service_mean_epoch_seconds")
        return [
            Check(label, "service mean s/epoch <= plain loop (plain/service >= 1)", per_epoch, at_least(per_epoch, 1))
        ]
    return []


def seed_summaries(results: Sequence[ScenarioResult]) -> dict[str, dict[str, Any]]:
    """Per scenario: each seed's test accuracies (both sides of a pair, and their difference) and the means.

    One test batch of 1,017 images has a standard error of about 1.1 points at 86%, and a run's best epoch moves
    with its seed, so a single seed cannot settle a 1-point tolerance or a threshold; the mean over seeds can.
    """
    by_name: dict[str, list[ScenarioResult]] = {}
    for result in results:
        by_name.setdefault(result.scenario.name, []).append(result)
    summaries = {}
    for name, runs in by_name.items():
        service = [r.service.test_accuracy for r in runs]
        plain = [r.plain.test_accuracy for r in runs if r.plain is not None]
        diffs = [d for r in runs if (d := r.ratios().get("service_minus_plain_test_accuracy")) is not None]
        totals = [t for r in runs if (t := r.ratios().get("plain_over_service_total_seconds")) is not None]
        measured = [a for a in service if a is not None]
        summaries[name] = {
            "seeds": [r.scenario.request.seed for r in runs],
            "paired": any(r.plain is not None for r in runs),
            "service_test_accuracy": service,
            "plain_test_accuracy": plain,
            "service_minus_plain_test_accuracy": diffs,
            "mean_service_test_accuracy": mean_or_none(measured),
            "stdev_service_test_accuracy": statistics.stdev(measured) if len(measured) > 1 else None,
            "mean_plain_test_accuracy": mean_or_none([a for a in plain if a is not None]),
            "mean_difference": mean_or_none(diffs),
            "stdev_difference": statistics.stdev(diffs) if len(diffs) > 1 else None,
            "mean_plain_over_service_total_seconds": mean_or_none(totals),
        }
    return summaries


def seed_checks(summaries: dict[str, dict[str, Any]]) -> list[Check]:
    """The accuracy targets, on the mean over seeds: the floors (linear, recipe) and linear's tolerance."""
    checks = []
    for name, summary in summaries.items():
        seeds = summary["seeds"]
        over = f"mean over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
        if name in ACCURACY_TARGETS:
            accuracies = [a or 0.0 for a in summary["service_test_accuracy"]]
            acc = statistics.fmean(accuracies)
            target = ACCURACY_TARGETS[name]
            checks.append(Check(name, f"service test acc >= {target:g} ({over})", acc, acc >= target))
        if name == "linear":
            diff = summary["mean_difference"]
            checks.append(
                Check(
                    name,
                    f"|service - plain test acc| <= {LINEAR_ACCURACY_TOLERANCE:g} ({over})",
                    diff,
                    diff is not None and abs(diff) <= LINEAR_ACCURACY_TOLERANCE,
                )
            )
    return checks


def mean_or_none(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


# ---------------------------------------------------------------- running


def run_scenario(scenario: Scenario, service: ServiceHarness, cifar_dir: Path, cfg: BenchConfig) -> ScenarioResult:
    req = scenario.request
    log.info(
        "%s: service job (%s, %d px, %d epoch(s), batch %d)",
        scenario.label,
        req.strategy,
        req.image_size,
        req.epochs,
        req.batch_size,
    )
    ours = service.run(scenario)
    log.info("%s: service job %s in %.1f s", scenario.label, ours.extra["status"], ours.total_seconds)
    plain = None
    if scenario.plain_twin and ours.extra["status"] != "succeeded":
        log.error(
            "%s: skipping the plain loop, the service job did not succeed: %s", scenario.label, ours.extra["error"]
        )
    elif scenario.plain_twin:
        log.info("%s: plain loop", scenario.label)
        plain = run_plain(req, scenario.label, cifar_dir, cfg.plain_num_workers)
        log.info("%s: plain loop in %.1f s", scenario.label, plain.total_seconds)
    result = ScenarioResult(scenario, ours, plain)
    result.checks = checks_for(result)
    return result


# ---------------------------------------------------------------- report


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


TABLE_HEADERS = (
    "scenario",
    "side",
    "strategy",
    "px",
    "epochs",
    "s/epoch",
    "1st epoch s",
    "total s",
    "test acc",
    "before FT",
)
LEFT_ALIGNED = 3  # scenario, side, strategy


def table_row(r: RunResult) -> list[str]:
    return [
        r.scenario,
        r.side,
        r.strategy,
        str(r.image_size),
        str(len(r.epochs)),
        fmt(r.mean_epoch_seconds),
        fmt(r.first_epoch_seconds),
        fmt(r.total_seconds),
        fmt(r.test_accuracy, ".4f"),
        fmt(r.baseline_test_accuracy, ".4f"),
    ]


def format_table(results: Sequence[ScenarioResult]) -> str:
    rows = [table_row(run) for result in results for run in result.runs]
    widths = [max(len(row[i]) for row in [TABLE_HEADERS, *rows]) for i in range(len(TABLE_HEADERS))]

    def line(cells: Sequence[str]) -> str:
        aligned = (
            cell.ljust(width) if i < LEFT_ALIGNED else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(aligned)

    header = line(TABLE_HEADERS)
    return "\n".join([header, "-" * len(header), *(line(row) for row in rows)])


def ratio_line(result: ScenarioResult) -> str | None:
    """Plain/service ratios for a pair; what fine-tuning bought for a service-only job that measured it."""
    name, s, r = result.scenario.label, result.service, result.ratios()
    if result.plain is not None:
        per_epoch = fmt(r["plain_over_service_mean_epoch_seconds"], ".2f")
        total = fmt(r["plain_over_service_total_seconds"], ".2f")
        acc = fmt(r["service_minus_plain_test_accuracy"], "+.4f")
        return f"  {name}: plain/service s/epoch {per_epoch}x, total {total}x; test acc service - plain {acc}"
    if s.baseline_test_accuracy is not None:
        gain = fmt(difference(s.test_accuracy, s.baseline_test_accuracy), "+.4f")
        return (
            f"  {name}: test acc {fmt(s.test_accuracy, '.4f')}, before fine-tuning "
            f"{fmt(s.baseline_test_accuracy, '.4f')} ({gain}), {fmt(s.total_seconds)} s in all"
        )
    return None


def ratio_lines(results: Sequence[ScenarioResult]) -> list[str]:
    lines = []
    for result in results:
        line = ratio_line(result)
        if line is not None:
            lines.append(line)
        status = result.service.extra.get("status")
        if status != "succeeded":
            lines.append(f"  {result.scenario.label}: service job {status}: {result.service.extra.get('error')}")
    return lines


def seed_lines(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """For a scenario run with several seeds: the test accuracies per seed and their means."""
    lines = []
    for name, summary in summaries.items():
        seeds = summary["seeds"]
        if len(seeds) < 2:
            continue
        if not summary["paired"]:
            per_seed = ", ".join(
                f"seed {seed} {fmt(a, '.4f')}" for seed, a in zip(seeds, summary["service_test_accuracy"], strict=True)
            )
            mean = fmt(summary["mean_service_test_accuracy"], ".4f")
            sd = fmt(summary["stdev_service_test_accuracy"], ".4f")
            lines.append(f"  {name} over {len(seeds)} seeds: test acc {per_seed}; mean {mean} (sd {sd})")
            continue
        per_seed = ", ".join(
            f"seed {seed} {fmt(d, '+.4f')}"
            for seed, d in zip(seeds, summary["service_minus_plain_test_accuracy"], strict=False)
        )
        means = (
            f"test acc service {fmt(summary['mean_service_test_accuracy'], '.4f')}, "
            f"plain {fmt(summary['mean_plain_test_accuracy'], '.4f')}"
        )
        diff = f"mean {fmt(summary['mean_difference'], '+.4f')} (sd {fmt(summary['stdev_difference'], '.4f')})"
        speed = f"plain/service total {fmt(summary['mean_plain_over_service_total_seconds'], '.2f')}x"
        lines.append(f"  {name} over {len(seeds)} seeds: {means}; service - plain: {per_seed}; {diff}; {speed}")
    return lines


def print_report(cfg: BenchConfig, results: Sequence[ScenarioResult], sizes: dict[str, int]) -> None:
    print()
    print(
        f"visiontune fine-tuning benchmark: CIFAR-10 subset ({sizes['train_images']} train / {sizes['test_images']}"
        f" test images), efficientnet_lite0, {os.cpu_count()} CPU(s), torch {torch.__version__}"
        + (" [QUICK smoke mode]" if cfg.quick else "")
    )
    print(format_table(results))
    print("(s/epoch: training pass + pass over the 10% hold-out on both sides; the service's linear first epoch")
    print(" includes the one-time feature extraction. before FT: test accuracy before fine-tuning, when measured)")
    print("ratios:")
    print("\n".join(ratio_lines(results)))
    summaries = seed_summaries(results)
    for line in seed_lines(summaries):
        print(line)
    for check in all_checks(results, summaries):
        print(
            f"{'PASS' if check.passed else 'FAIL'}  {check.scenario}: {check.description}  ({fmt(check.value, '.4g')})"
        )
    if cfg.quick:
        print("(quick mode: a smoke run on a tiny subset at 64 px; the targets are meant for the full benchmark)")


def environment(load_at_start: float) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        # 1-minute load averages: other processes on the machine make every timing here unreliable.
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),  # when this file was (re)written
    }


def results_payload(
    cfg: BenchConfig,
    results: Sequence[ScenarioResult],
    sizes: dict[str, int],
    env: dict[str, Any],
    ingest_seconds: float | None,
    complete: bool,
) -> dict[str, Any]:
    summaries = seed_summaries(results)
    checks = all_checks(results, summaries)
    return {
        "benchmark": "finetune_cifar",
        "complete": complete,
        "environment": env,
        "config": cfg.as_json(),
        "data": {**sizes, "ingest_seconds": ingest_seconds},
        "scenarios": {r.scenario.label: r.as_json() for r in results},
        "over_seeds": summaries,
        "checks": [asdict(c) for c in checks],
        "all_passed": bool(checks) and all(c.passed for c in checks),
    }


def all_checks(results: Sequence[ScenarioResult], summaries: dict[str, dict[str, Any]]) -> list[Check]:
    return [c for r in results for c in r.checks] + seed_checks(summaries)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--cifar", type=Path, default=DEFAULT_CIFAR, help="cifar-10-batches-py folder")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIO_REQUESTS),
        help=f"comma-separated, run in this order (default {','.join(SCENARIO_REQUESTS)})",
    )
    parser.add_argument(
        "--recipe-json",
        default="{}",
        help="JSON object of job fields overriding the recipe scenario's, e.g. '{\"image_size\": 160}'",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke mode: {QUICK_LIMITS[0]} train / {QUICK_LIMITS[1]} test images, 64 px and 1 epoch everywhere",
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated job seeds; every scenario runs once per seed (both sides of a pair use the seed), "
        "and the linear accuracy check uses the mean over seeds (default 0)",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON results file")
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> BenchConfig:
    """Raises ValueError (bad scenario name, recipe JSON or job field) before anything runs."""
    names = list(dict.fromkeys(n.strip() for n in args.scenarios.split(",") if n.strip()))
    unknown = [n for n in names if n not in SCENARIO_REQUESTS]
    if unknown or not names:
        raise ValueError(
            f"unknown scenario(s) {unknown or args.scenarios!r}; choose from {', '.join(SCENARIO_REQUESTS)}"
        )
    overrides = json.loads(args.recipe_json)
    if not isinstance(overrides, dict):
        raise ValueError("--recipe-json must be a JSON object of job fields")
    if "dataset_id" in overrides or "model_name" in overrides:
        raise ValueError("--recipe-json cannot set dataset_id or model_name")
    try:
        seeds = tuple(dict.fromkeys(int(s) for s in args.seeds.split(",") if s.strip()))
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, not {args.seeds!r}") from None
    if not seeds:
        raise ValueError("--seeds needs at least one seed")
    several = len(seeds) > 1
    scenarios = tuple(make_scenario(n, overrides, args.quick, seed, several) for n in names for seed in seeds)
    limits = QUICK_LIMITS if args.quick else (None, None)
    return BenchConfig(args.cifar, args.quick, scenarios, seeds, *limits)


def warn_if_busy() -> float:
    """The 1-minute load average now; warns when other processes already compete for the CPUs."""
    load = load_average()
    if load > 0.5:
        log.warning(
            "1-minute load average is %.2f on %d CPU(s) before the benchmark starts: if other processes are "
            "running, the timings will be noisy (torch's threads slow down badly when they share cores)",
            load,
            os.cpu_count() or 1,
        )
    return load


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        cfg = make_config(args)
    except (ValueError, ValidationError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"invalid arguments: {exc}", file=sys.stderr)
        return 2
    if not (cfg.cifar_dir / "batches.meta").is_file():
        print(f"no CIFAR-10 python batches at {cfg.cifar_dir} (use --cifar DIR)", file=sys.stderr)
        return 2
    output = args.output or (QUICK_OUTPUT if cfg.quick else DEFAULT_OUTPUT)
    load_at_start = warn_if_busy()

    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory(prefix="visiontune-bench-") as tmp:
        workdir = Path(tmp)
        cifar_dir = cfg.cifar_dir
        if cfg.train_limit is not None and cfg.test_limit is not None:
            cifar_dir = write_subset_dir(cifar_dir, workdir / "subset", cfg.train_limit, cfg.test_limit)
        data = load_cifar(cifar_dir)
        sizes = {"train_images": len(data.train_labels), "test_images": len(data.test_labels)}
        log.info("data: %s (%d train, %d test images)", cifar_dir, *sizes.values())
        with service_harness(workdir / "service", cifar_dir) as service:
            for scenario in cfg.scenarios:
                results.append(run_scenario(scenario, service, cifar_dir, cfg))
                complete = len(results) == len(cfg.scenarios)
                payload = results_payload(
                    cfg, results, sizes, environment(load_at_start), service.ingest_seconds, complete
                )
                write_json(output, payload)

    print_report(cfg, results, sizes)
    print(f"results: {output}")
    return 0 if all(r.service.extra.get("status") == "succeeded" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
