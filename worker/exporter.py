"""Make one export on a worker: ONNX (or int8, calibrated on the version's training images) from the version's
checkpoint, verified against the fp32 model on its validation split (and test split) before it may be served.

Exports are fenced like training jobs. A worker claims a queued export with one conditional UPDATE that bumps
`attempt` and sets its lease, renews the lease from a thread while it works, and records the outcome only if it
still holds that attempt. A worker that dies leaves the export `running` until its lease runs out; the reaper
then puts it back in the queue and sends it again (worker/reaper.py). Each attempt writes its own file
(atomically, named after the attempt), so a stale worker never replaces the file a newer attempt recorded. The
transitions themselves (claim, fenced writes, the reaper's) are app/export_state.py's.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from app import export_state
from app.config import Settings
from app.db import session_scope
from app.job_state import LeaseLost
from app.ml.checkpoint import file_sha256
from app.ml.data import SampleSet, load_splits, stratified_split
from app.ml.export import OnnxClassifier, export_onnx, quantize_int8, torch_logits, verify
from app.ml.predictor import LoadedModel
from app.ml.transforms import normalize_batch
from app.models import Checkpoint, Dataset, Export, ExportStatus, Job, utcnow
from app.services.exports import SUFFIX
from worker.lease import LeaseKeeper, with_db_retry

log = logging.getLogger("visiontune.exporter")

CALIBRATION_IMAGES = 300  # "a few hundred of the version's training images"
VERIFICATION_IMAGES = 2000  # per split, at most
BATCH = 32

T = TypeVar("T")


class ExportFailed(Exception):
    """The export cannot be made (missing data or checkpoint); the message says why."""


# ---------------------------------------------------------------- claim, lease and fenced writes (units of work)


def claim_export(settings: Settings, factory: sessionmaker[Session], export_id: uuid.UUID, owner: str) -> int | None:
    """Take a queued export (app.export_state.claim); the new attempt number, or None if it is not ours."""
    with session_scope(factory) as s:
        return export_state.claim(s, export_id, owner, settings.lease_seconds)


def fenced_write(
    settings: Settings, factory: sessionmaker[Session], export_id: uuid.UUID, attempt: int, **values: Any
) -> bool:
    """Renew the lease (and set values) only while this attempt holds the export; False once it lost it."""
    with session_scope(factory) as s:
        return export_state.fenced_write(s, export_id, attempt, settings.lease_seconds, **values)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------- the run


def run_export(
    settings: Settings, factory: sessionmaker[Session], export_id: uuid.UUID, owner: str | None = None
) -> str:
    """Make, verify and record the export; returns its final status ('skipped' when it is not claimable,
    'lease-lost' when another attempt took it over meanwhile)."""
    owner = owner or worker_name()
    attempt = with_db_retry(lambda: claim_export(settings, factory, export_id, owner), settings.lease_seconds)
    if attempt is None:
        log.info("export %s is not claimable (finished, or being made by a worker)", export_id)
        return "skipped"
    log.info("export %s: attempt %s claimed by %s", export_id, attempt, owner)
    keeper = LeaseKeeper(
        f"export-lease-{export_id}",
        settings.lease_seconds,
        renew=lambda: fenced_write(settings, factory, export_id, attempt),
    )
    keeper.start()
    try:
        try:
            fields = _make(settings, factory, export_id, attempt, keeper)
        except LeaseLost:
            log.warning("export %s attempt %s lost its lease; stopping without writing", export_id, attempt)
            return "lease-lost"
        except Exception as exc:  # recorded on the export: its status says failed, the message why
            log.exception("export %s failed", export_id)
            reason = str(exc) if isinstance(exc, ExportFailed) else f"{exc.__class__.__name__}: {str(exc)[:300]}"
            fields = {"status": ExportStatus.failed, "error": reason}
        final = dict(fields, finished_at=utcnow(), lease_owner=None, lease_expires_at=None)
        try:
            recorded = with_db_retry(
                lambda: fenced_write(settings, factory, export_id, attempt, **final), settings.lease_seconds
            )
        except (sa_exc.OperationalError, sa_exc.InterfaceError):
            recorded = False  # still unreachable: the lease runs out and the reaper counts the attempt
        made = Path(fields["path"]) if fields.get("path") else None
        if not recorded:
            log.warning(
                "export %s attempt %s no longer holds its lease; not recording %s", export_id, attempt, fields["status"]
            )
            if made is not None:
                made.unlink(missing_ok=True)
            return "lease-lost"
        if made is not None:
            _prune_other_attempts(made)
        return str(fields["status"])
    finally:
        keeper.stop()
        keeper.join(timeout=10)


def _make(
    settings: Settings, factory: sessionmaker[Session], export_id: uuid.UUID, attempt: int, keeper: LeaseKeeper
) -> dict[str, Any]:
    with session_scope(factory) as s:
        export = s.get(Export, export_id)
        assert export is not None
        job = s.get(Job, export.job_id)
        best = next((c for c in job.checkpoints if c.is_best), None) if job else None
        if job is None or best is None:
            raise ExportFailed("the version's job has no best checkpoint")
        dataset = s.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            raise ExportFailed("the version's dataset was deleted: exports need its images to calibrate and verify")
        fmt, config, dataset_path = export.format, dict(job.config), Path(dataset.path)
        checkpoint: Checkpoint = best
        ckpt_path, ckpt_sha, job_id = Path(checkpoint.path), checkpoint.sha256, job.id
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    loaded = LoadedModel.from_file(ckpt_path, ckpt_sha)
    _, splits = load_splits(dataset_path)
    train, val = _train_val(splits, config)
    folder = settings.checkpoints_dir / str(job_id) / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"model-a{attempt}{SUFFIX[fmt]}"
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{fmt}-a{attempt}-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_onnx(loaded.model.cpu(), loaded.image_size, fp32)
        _check(keeper)
        made = fp32
        if fmt == "onnx-int8":
            made = Path(tmp) / "model.int8.onnx"
            calibration = train.subset(_sample(len(train), CALIBRATION_IMAGES, seed=1))
            quantize_int8(fp32, made, (x for x, _ in _guarded(_batches(loaded, calibration), keeper)))
        candidate = OnnxClassifier(made, threads=settings.torch_threads)
        reference = torch_logits(loaded.model)
        report: dict[str, Any] = {}
        for split, samples in (("val", val), ("test", splits.get("test"))):
            if samples is None or len(samples) == 0:
                continue
            chosen = samples.subset(_sample(len(samples), VERIFICATION_IMAGES, seed=2))
            report[split] = verify(reference, candidate.logits, _guarded(_batches(loaded, chosen), keeper)).as_dict()
        if not report:
            raise ExportFailed("the version's dataset has no validation or test images to verify the export on")
        _check(keeper)
        os.replace(made, final)
    passed = all(r["passed"] for r in report.values())
    status = ExportStatus.verified if passed else ExportStatus.rejected
    meta = {
        "arch": loaded.arch,
        "class_names": loaded.class_names,
        "image_size": loaded.image_size,
        "preprocessing": loaded.preprocessing.as_dict(),
        "input": "images: float32 N×3×S×S, resized (shorter side, centre crop) and normalized with preprocessing",
        "output": "logits: float32 N×classes",
    }
    return {
        "status": status,
        "path": str(final),
        "sha256": file_sha256(final),
        "size_bytes": final.stat().st_size,
        "meta": meta,
        "report": report,
        "error": None if passed else "; ".join(f"{k}: {r['reason']}" for k, r in report.items() if not r["passed"]),
    }


def _prune_other_attempts(keep: Path) -> None:
    """Remove what other attempts of this export left beside the recorded file: their files, temporary folders."""
    named = re.fullmatch(r"model-a\d+(\..+)", keep.name)
    assert named is not None, keep
    suffix = named.group(1)
    fmt = next(f for f, sfx in SUFFIX.items() if sfx == suffix)
    for entry in keep.parent.iterdir():
        if entry == keep:
            continue
        if entry.is_dir() and entry.name.startswith(f".{fmt}-a"):
            shutil.rmtree(entry, ignore_errors=True)
        elif re.fullmatch(rf"model(-a\d+)?{re.escape(suffix)}", entry.name):
            entry.unlink(missing_ok=True)


def _check(keeper: LeaseKeeper) -> None:
    if keeper.lost.is_set():
        raise LeaseLost("another attempt owns the export now")


def _guarded(batches: Iterable[T], keeper: LeaseKeeper) -> Iterator[T]:
    """The batches, stopping (LeaseLost) as soon as the lease is lost: a stale attempt does no more work."""
    for batch in batches:
        _check(keeper)
        yield batch


def _train_val(splits: dict[str, SampleSet], config: dict[str, Any]) -> tuple[SampleSet, SampleSet | None]:
    """The job's own training and validation images (its val split, or the seeded hold-out it trained without)."""
    train = splits["train"]
    if "val" in splits:
        return train, splits["val"]
    fraction = float(config.get("val_fraction", 0.1))
    if fraction <= 0:
        return train, None
    train_idx, val_idx = stratified_split(train.labels, fraction, int(config.get("seed", 0)))
    return train.subset(train_idx), train.subset(val_idx)


def _sample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _batches(loaded: LoadedModel, samples: SampleSet) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Preprocessed float32 batches (the serving transform and normalization) with their labels."""
    prep = loaded.preprocessing
    for start in range(0, len(samples), BATCH):
        idx = range(start, min(start + BATCH, len(samples)))
        images = torch.stack([loaded.transform(samples.image(i)) for i in idx])
        x = normalize_batch(images, prep.mean, prep.std)
        yield x.numpy(), np.asarray(samples.labels[start : start + len(idx)])
