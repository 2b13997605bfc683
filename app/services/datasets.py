"""Dataset use-cases: ingest an upload, register a directory on the server, list and fetch."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Actor
from app.config import Settings
from app.db import after_commit
from app.errors import Conflict, Forbidden, InvalidDataset, InvalidInput, NotFound, PayloadTooLarge
from app.ml.data import (
    DEFAULT_MAX_IMAGE_PIXELS,
    LEFT_OUT_REASONS,
    DatasetFormatError,
    cifar_split_files,
    find_cifar_dir,
    read_cifar_batch,
    read_cifar_meta,
    scan_imagefolder,
    write_manifest,
)
from app.models import DEFAULT_PROJECT, Dataset, Job, JobStatus
from app.services import audit, predictions, quotas
from app.services.archives import extract_archive, read_skipped_report, remove_tree, save_stream, shown

NOT_AN_IMAGE = "not an image file"


def _index(
    content: Path,
    root_in_manifest: str,
    skip_invalid: bool,
    *,
    within: Path | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    unpacked: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, dataset fields) for the images under content; 422 when they do not form a dataset.

    Nothing outside `within` (default: content) is read: links that lead out are reported, not followed.
    When `unpacked`, content is what extract_archive wrote, and the files it left out are reported too.
    """
    skipped = read_skipped_report(content) if unpacked else []
    try:
        cifar_dir = find_cifar_dir(content, within)
        if cifar_dir is not None:
            return _index_cifar(content, cifar_dir, root_in_manifest, within)
        return _index_folder(content, root_in_manifest, skip_invalid, within, max_pixels, skipped)
    except DatasetFormatError as exc:
        raise InvalidDataset(str(exc)) from None


def _index_cifar(
    content: Path, cifar_dir: Path, root_in_manifest: str, within: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    classes = read_cifar_meta(cifar_dir)
    files = cifar_split_files(cifar_dir, within or content)
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


def _index_folder(
    content: Path,
    root_in_manifest: str,
    skip_invalid: bool,
    within: Path | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    skipped: list[dict[str, str]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    scan = scan_imagefolder(content, within=within, max_pixels=max_pixels)
    invalid = scan.invalid + (skipped or [])
    # Images that do not decode refuse the dataset (unless skip_invalid); other files and links are left out.
    unreadable = [f for f in invalid if not f["reason"].startswith(LEFT_OUT_REASONS)]
    if unreadable and not skip_invalid:
        listed = ", ".join(f"{shown(f['file'])} ({f['reason']})" for f in unreadable[:5])
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
        "invalid_files": invalid[:1000],
    }
    return manifest, fields


def _create(
    session: Session,
    dataset_id: uuid.UUID,
    name: str,
    source: str,
    path: Path,
    fields: dict[str, Any],
    project: str = DEFAULT_PROJECT,
    size_bytes: int = 0,
) -> Dataset:
    total = sum(sum(c.values()) for c in fields["split_counts"].values())
    dataset = Dataset(
        id=dataset_id,
        project=project,
        name=name,
        source=source,
        path=str(path),
        num_images=total,
        size_bytes=size_bytes,
        **fields,
    )
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
    """Store an uploaded archive from a stream, then ingest it like ingest_saved_upload."""
    upload = settings.uploads_dir / f"{uuid.uuid4()}.upload"
    try:
        save_stream(stream, upload, settings.max_upload_bytes)
    except BaseException:
        upload.unlink(missing_ok=True)
        raise
    return ingest_saved_upload(session, settings, upload, filename, name, skip_invalid)


def ingest_saved_upload(
    session: Session,
    settings: Settings,
    upload: Path,
    filename: str | None,
    name: str | None,
    skip_invalid: bool = False,
    project: str = DEFAULT_PROJECT,
) -> Dataset:
    """Unpack, validate and index an archive already written to upload (which is removed afterwards) into
    project; nothing is left behind when it is refused. It may unpack to at most what the project's storage
    quota has left."""
    dataset_id = uuid.uuid4()
    staging = settings.datasets_dir / f".{dataset_id}.staging"
    final = settings.datasets_dir / str(dataset_id)
    left = quotas.storage_left(session, settings, project)
    budget = min(settings.max_extracted_bytes, left)
    try:
        try:
            extract_archive(
                upload,
                staging,
                budget,
                max_entries=settings.max_archive_entries,
                max_ratio=settings.max_compression_ratio,
            )
        except PayloadTooLarge as exc:
            if budget == left and exc.message.endswith("bytes, the limit"):  # the quota, not the ratio
                raise PayloadTooLarge(
                    f"{exc.message}: the {left:,} bytes left of the project's storage quota "
                    "(VISIONTUNE_STORAGE_QUOTA_BYTES); delete datasets or jobs first"
                ) from None
            raise
        manifest, fields = _index(staging, "", skip_invalid, max_pixels=settings.max_image_pixels)
        write_manifest(staging, manifest)
        os.replace(staging, final)
    finally:
        upload.unlink(missing_ok=True)
        remove_tree(staging)
    default_name = Path(filename or "dataset").name
    for suffix in (".zip", ".gz", ".tgz", ".tar"):
        default_name = default_name.removesuffix(suffix)
    try:
        size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
        return _create(session, dataset_id, name or default_name or "dataset", "upload", final, fields, project, size)
    except BaseException:
        remove_tree(final)
        raise


def register_directory(
    session: Session,
    settings: Settings,
    path: str,
    name: str | None,
    skip_invalid: bool,
    project: str = DEFAULT_PROJECT,
) -> Dataset:
    """Index a directory already on the server's disk (under dataset_root) without copying it.

    The path (relative to the root, or absolute) must resolve inside the root, and so must every file and folder
    indexed (links leading out are reported and left out). Messages quote the input, never the root.
    """
    if settings.dataset_root is None:
        raise Forbidden("registering server directories is disabled: set VISIONTUNE_DATASET_ROOT")
    quoted = shown(path)
    if "\x00" in path:
        raise InvalidInput(f"{quoted} is not a valid path: it contains a NUL byte")
    if len(path) > 4096:
        raise InvalidInput(f"the path {quoted} is longer than 4096 characters")
    try:
        too_long = any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in Path(path).parts)
    except UnicodeEncodeError:
        raise InvalidInput(f"{quoted} is not a valid path") from None
    if too_long:
        raise InvalidInput(f"{quoted} has a path component longer than 255 bytes")
    root = settings.dataset_root.resolve()
    candidate = Path(path)
    try:
        target = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop (RuntimeError before 3.13), ENAMETOOLONG
        raise InvalidInput(f"{quoted} cannot be resolved: a symbolic link loop or an over-long path") from None
    if not target.is_relative_to(root):
        raise Forbidden(f"{quoted} is outside the dataset root")
    try:
        is_dir = target.is_dir()
    except OSError:
        is_dir = False
    if not is_dir:
        raise InvalidInput(f"{quoted} is not a directory on the server")
    dataset_id = uuid.uuid4()
    manifest, fields = _index(
        target, str(target), skip_invalid, within=root, max_pixels=settings.max_image_pixels, unpacked=False
    )
    home = settings.datasets_dir / str(dataset_id)
    home.mkdir(parents=True, exist_ok=True)
    write_manifest(home, manifest)
    return _create(session, dataset_id, name or target.name, "local", home, fields, project)


def get_dataset(session: Session, project: str, dataset_id: uuid.UUID) -> Dataset:
    """The project's dataset; another project's is as absent as a missing one."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.project != project:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return dataset


def list_datasets(session: Session, project: str, limit: int, offset: int) -> tuple[list[Dataset], int]:
    total = session.scalar(select(func.count()).select_from(Dataset).where(Dataset.project == project)) or 0
    rows = session.scalars(
        select(Dataset)
        .where(Dataset.project == project)
        .order_by(Dataset.created_at.desc(), Dataset.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), total


def delete_dataset(session: Session, actor: Actor, dataset_id: uuid.UUID) -> None:
    """Remove a dataset and its folder (an upload's images; a registered directory's index only, never the
    operator's files); 409 while a queued or running job uses it."""
    dataset = get_dataset(session, actor.project, dataset_id)
    # Lock the dataset row so a job cannot be submitted on it between the check and the delete.
    session.execute(select(Dataset.id).where(Dataset.id == dataset_id).with_for_update())
    busy = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.dataset_id == dataset_id, Job.status.in_((JobStatus.queued, JobStatus.running)))
    )
    if busy:
        raise Conflict(f"dataset {dataset_id} is used by {busy} queued or running job(s); cancel them first")
    folder = Path(dataset.path)
    predictions.forget_dataset(session, dataset_id)  # finished jobs stay, but their refs named these images
    session.delete(dataset)
    session.flush()
    audit.record(session, actor, "dataset.delete", "dataset", dataset_id, {"name": dataset.name})
    after_commit(session, lambda: remove_tree(folder))
