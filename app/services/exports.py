"""Export use-cases: ask for an export of a model version (queued for a worker), list them, find the file."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import Actor
from app.db import after_commit
from app.errors import Conflict, NotFound
from app.models import Export, ExportStatus, ModelVersion, utcnow
from app.services import audit, registry

FORMATS = ("onnx", "onnx-int8")
SUFFIX = {"onnx": ".onnx", "onnx-int8": ".int8.onnx"}
EnqueueExport = Callable[[uuid.UUID], None]


def version_of(session: Session, project: str, name: str, version: int) -> ModelVersion:
    registry.get_model(session, project, name)
    found = registry.find_version(session, project, name, version)
    if found is None:
        raise NotFound(f"model {name!r} has no version {version}")
    return found


def request_export(
    session: Session, actor: Actor, version: ModelVersion, fmt: str, enqueue: EnqueueExport
) -> tuple[Export, bool]:
    """(export, created): a new queued export of version in fmt, or the existing one (a failed one is retried)."""
    existing = session.scalar(select(Export).where(Export.job_id == version.job_id, Export.format == fmt))
    if existing is not None and existing.status != ExportStatus.failed:
        return existing, False
    now = utcnow()
    if existing is None:
        existing = Export(
            project=version.project, job_id=version.job_id, format=fmt, status=ExportStatus.queued, enqueued_at=now
        )
        try:
            with session.begin_nested():
                session.add(existing)
        except IntegrityError:  # asked for concurrently
            raced = session.scalar(select(Export).where(Export.job_id == version.job_id, Export.format == fmt))
            assert raced is not None
            return raced, False
    else:  # a failed export asked for again: a fresh budget of attempts (the attempt number, its fence, goes on)
        existing.status, existing.error, existing.finished_at = ExportStatus.queued, None, None
        existing.failures, existing.enqueued_at = 0, now
    session.flush()
    export_id = existing.id
    details = {"model": version.model_name, "version": version.version, "format": fmt}
    audit.record(session, actor, "export.request", "export", export_id, details)
    after_commit(session, lambda: enqueue(export_id))
    return existing, True


def queue_exports(session: Session, version: ModelVersion, formats: list[str], sent: bool) -> list[uuid.UUID]:
    """Queued exports for a version that was just registered (a job's `exports`); ids to send after commit.

    `sent`: the caller sends their tasks after commit; if not, the reaper sends them on its next sweep.
    """
    ids = []
    enqueued_at = utcnow() if sent else None
    for fmt in dict.fromkeys(formats):
        export = Export(
            project=version.project,
            job_id=version.job_id,
            format=fmt,
            status=ExportStatus.queued,
            enqueued_at=enqueued_at,
        )
        session.add(export)
        session.flush()
        ids.append(export.id)
    return ids


def list_exports(session: Session, version: ModelVersion) -> list[Export]:
    return list(session.scalars(select(Export).where(Export.job_id == version.job_id).order_by(Export.format)))


def get_export(session: Session, version: ModelVersion, fmt: str) -> Export:
    export = session.scalar(select(Export).where(Export.job_id == version.job_id, Export.format == fmt))
    if export is None:
        raise NotFound(f"version {version.version} of {version.model_name!r} has no {fmt} export")
    return export


def downloadable(export: Export) -> Export:
    """The export if its file exists (verified, or rejected with its report); 409 while it is being made."""
    if export.status not in (ExportStatus.verified, ExportStatus.rejected) or not export.path:
        raise Conflict(f"the {export.format} export is {export.status}" + (f": {export.error}" if export.error else ""))
    return export
