"""Make one export on a worker: ONNX (or int8, calibrated on the version's training images) from the version's
checkpoint, verified against the fp32 model on its validation split (and test split) before it may be served.

A re-delivered task (the worker died) makes the export again from the checkpoint; the file is written
atomically, so a half-written one is never recorded.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import session_scope
from app.ml.checkpoint import file_sha256
from app.ml.data import SampleSet, load_splits, stratified_split
from app.ml.export import OnnxClassifier, export_onnx, quantize_int8, torch_logits, verify
from app.ml.predictor import LoadedModel
from app.ml.transforms import normalize_batch
from app.models import Checkpoint, Dataset, Export, ExportStatus, Job
from app.services.exports import SUFFIX, finished_now

log = logging.getLogger("visiontune.exporter")

CALIBRATION_IMAGES = 300  # "a few hundred of the version's training images"
VERIFICATION_IMAGES = 2000  # per split, at most
BATCH = 32


class ExportFailed(Exception):
    """The export cannot be made (missing data or checkpoint); the message says why."""


def run_export(settings: Settings, factory: sessionmaker[Session], export_id: uuid.UUID) -> str:
    """Make, verify and record the export; returns its final status (or 'skipped' when already done)."""
    with session_scope(factory) as s:
        claimed = s.execute(
            update(Export)
            .where(Export.id == export_id, Export.status.in_((ExportStatus.queued, ExportStatus.running)))
            .values(status=ExportStatus.running)
        ).rowcount
    if not claimed:
        return "skipped"
    try:
        fields = _make(settings, factory, export_id)
    except Exception as exc:  # recorded on the export: its status says failed, the message why
        log.exception("export %s failed", export_id)
        reason = str(exc) if isinstance(exc, ExportFailed) else f"{exc.__class__.__name__}: {str(exc)[:300]}"
        fields = {"status": ExportStatus.failed, "error": reason}
    with session_scope(factory) as s:
        s.execute(update(Export).where(Export.id == export_id).values(finished_at=finished_now(), **fields))
    return str(fields["status"])


def _make(settings: Settings, factory: sessionmaker[Session], export_id: uuid.UUID) -> dict[str, Any]:
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
    final = folder / f"model{SUFFIX[fmt]}"
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_onnx(loaded.model.cpu(), loaded.image_size, fp32)
        made = fp32
        if fmt == "onnx-int8":
            made = Path(tmp) / "model.int8.onnx"
            calibration = train.subset(_sample(len(train), CALIBRATION_IMAGES, seed=1))
            quantize_int8(fp32, made, (x for x, _ in _batches(loaded, calibration)))
        candidate = OnnxClassifier(made, threads=settings.torch_threads)
        reference = torch_logits(loaded.model)
        report: dict[str, Any] = {}
        for split, samples in (("val", val), ("test", splits.get("test"))):
            if samples is None or len(samples) == 0:
                continue
            chosen = samples.subset(_sample(len(samples), VERIFICATION_IMAGES, seed=2))
            report[split] = verify(reference, candidate.logits, _batches(loaded, chosen)).as_dict()
        if not report:
            raise ExportFailed("the version's dataset has no validation or test images to verify the export on")
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
