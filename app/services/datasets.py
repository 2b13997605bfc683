"""Dataset use-cases: ingest an upload, register a directory on the server, list and fetch."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Forbidden, InvalidDataset, InvalidInput, NotFound
from app.ml.data import (
    DatasetFormatError,
    cifar_split_files,
    find_cifar_dir,
    read_cifar_batch,
    read_cifar_meta,
    scan_imagefolder,
    write_manifest,
)
from app.models import Dataset
from app.services.archives import extract_archive, remove_tree, save_stream

NOT_AN_IMAGE = "not an image file"


def _index(content: Path, root_in_manifest: str, skip_invalid: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, dataset fields) for the images under content; 422 when they do not form a dataset."""
    cifar_dir = find_cifar_dir(content)
    try:
        if cifar_dir is not None:
            return _index_cifar(content, cifar_dir, root_in_manifest)
        return _index_folder(content, root_in_manifest, skip_invalid)
    except DatasetFormatError as exc:
        raise InvalidDataset(str(exc)) from exc


def _index_cifar(content: Path, cifar_dir: Path, root_in_manifest: str) -> tuple[dict[str, Any], dict[str, Any]]:
    classes = read_cifar_meta(cifar_dir)
    files = cifar_split_files(cifar_dir)
    if not files.get("train"):
        raise DatasetFormatError("the CIFAR folder has no data_batch_* files to train on")
    counts: dict[str, dict[str, int]] = {}
    for split, names in files.items():
        tally: Counter[int] = Counter()
        for name in names:
            _, labels = read_cifar_batch(cifar_dir / name, len(classes))
            tally.update(labels.tolist())
        counts[split] = {c: tally.get(i, 0) for i, c in enumerate(classes)}
    rel = cifar_dir.relative_to(content)
    root = str(Path(root_in_manifest) / rel) if root_in_manifest else str(rel)
    manifest = {"format": "cifar10", "root": root, "class_names": classes, "splits": files}
    fields = {"format": "cifar10", "class_names": classes, "split_counts": counts, "invalid_files": []}
    return manifest, fields


def _index_folder(content: Path, root_in_manifest: str, skip_invalid: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    scan = scan_imagefolder(content)
    unreadable = [f for f in scan.invalid if not f["reason"].startswith(NOT_AN_IMAGE)]
    if unreadable and not skip_invalid:
        listed = ", ".join(f"{f['file']} ({f['reason']})" for f in unreadable[:5])
        raise InvalidDataset(
            f"{len(unreadable)} image file(s) cannot be read: {listed}"
            + (" ..." if len(unreadable) > 5 else "")
            + "; fix them or upload again with skip_invalid=true to leave them out",
            details=unreadable[:100],
        )
    counts = {
        split: {c: sum(1 for _, label in rows if label == i) for i, c in enumerate(scan.class_names)}
        for split, rows in scan.samples.items()
    }
    manifest = {
        "format": "imagefolder",
        "root": root_in_manifest,
        "class_names": scan.class_names,
        "samples": scan.samples,
    }
    fields = {
        "format": "imagefolder",
        "class_names": scan.class_names,
        "split_counts": counts,
        "invalid_files": scan.invalid[:1000],
    }
    return manifest, fields


def _create(
    session: Session, dataset_id: uuid.UUID, name: str, source: str, path: Path, fields: dict[str, Any]
) -> Dataset:
    total = sum(sum(c.values()) for c in fields["split_counts"].values())
    dataset = Dataset(id=dataset_id, name=name, source=source, path=str(path), num_images=total, **fields)
    session.add(dataset)
    session.flush()
    return dataset


def ingest_upload(
    session: Session,
    settings: Settings,
    stream: BinaryIO,
    filename: str | None,
    name: str | None,
    skip_invalid: bool = False,
) -> Dataset:
    """Store, unpack, validate and index an uploaded archive; nothing is left behind when it is refused."""
    dataset_id = uuid.uuid4()
    upload = settings.uploads_dir / f"{dataset_id}.upload"
    staging = settings.datasets_dir / f".{dataset_id}.staging"
    final = settings.datasets_dir / str(dataset_id)
    try:
        save_stream(stream, upload, settings.max_upload_bytes)
        extract_archive(upload, staging, settings.max_extracted_bytes)
        manifest, fields = _index(staging, "", skip_invalid)
        write_manifest(staging, manifest)
        os.replace(staging, final)
    finally:
        upload.unlink(missing_ok=True)
        remove_tree(staging)
    default_name = Path(filename or "dataset").name
    for suffix in (".zip", ".gz", ".tgz", ".tar"):
        default_name = default_name.removesuffix(suffix)
    try:
        return _create(session, dataset_id, name or default_name or "dataset", "upload", final, fields)
    except BaseException:
        remove_tree(final)
        raise


def register_directory(
    session: Session, settings: Settings, path: str, name: str | None, skip_invalid: bool
) -> Dataset:
    """Index a directory already on the server's disk (under dataset_root) without copying it."""
    if settings.dataset_root is None:
        raise Forbidden("registering server directories is disabled: set VISIONTUNE_DATASET_ROOT")
    root = settings.dataset_root.resolve()
    target = Path(path)
    target = (target if target.is_absolute() else root / target).resolve()
    if not target.is_relative_to(root):
        raise Forbidden(f"{path!r} is outside the dataset root {str(root)!r}")
    if not target.is_dir():
        raise InvalidInput(f"{path!r} is not a directory on the server")
    dataset_id = uuid.uuid4()
    manifest, fields = _index(target, str(target), skip_invalid)
    home = settings.datasets_dir / str(dataset_id)
    home.mkdir(parents=True, exist_ok=True)
    write_manifest(home, manifest)
    return _create(session, dataset_id, name or target.name, "local", home, fields)


def get_dataset(session: Session, dataset_id: uuid.UUID) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return dataset


def list_datasets(session: Session, limit: int, offset: int) -> tuple[list[Dataset], int]:
    total = session.scalar(select(func.count()).select_from(Dataset)) or 0
    rows = session.scalars(select(Dataset).order_by(Dataset.created_at.desc()).limit(limit).offset(offset)).all()
    return list(rows), total
