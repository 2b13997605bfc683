"""Model registry: versions of a named classifier, which one serves, and operator pins."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import InvalidInput, NoModelAvailable, NotFound
from app.models import Checkpoint, Job, ModelVersion, RegisteredModel


def register_version(session: Session, job: Job, checkpoint: Checkpoint, test_accuracy: float | None) -> ModelVersion:
    """Add the job's best checkpoint as the next version of its model name (safe against racing jobs)."""
    if session.get(RegisteredModel, job.model_name) is None:
        try:
            with session.begin_nested():
                session.add(RegisteredModel(name=job.model_name))
        except IntegrityError:
            pass  # another job registered the name first
    for _ in range(10):
        latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_name == job.model_name))
        version = ModelVersion(
            model_name=job.model_name,
            version=(latest or 0) + 1,
            job_id=job.id,
            checkpoint_id=checkpoint.id,
            arch=job.arch,
            val_accuracy=checkpoint.val_accuracy,
            test_accuracy=test_accuracy,
        )
        try:
            with session.begin_nested():
                session.add(version)
            return version
        except IntegrityError:
            continue  # a concurrent job took that number; read the max again
    raise RuntimeError(f"could not allocate a version number for {job.model_name}")


def get_model(session: Session, name: str) -> RegisteredModel:
    model = session.get(RegisteredModel, name)
    if model is None:
        raise NotFound(f"model {name!r} does not exist")
    return model


def list_models(session: Session) -> list[RegisteredModel]:
    return list(session.scalars(select(RegisteredModel).order_by(RegisteredModel.name)).all())


def best_version(session: Session, name: str) -> ModelVersion | None:
    """Highest validation accuracy; the newest version breaks ties."""
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.model_name == name)
        .order_by(ModelVersion.val_accuracy.desc().nulls_last(), ModelVersion.version.desc())
        .limit(1)
    )


def serving_version(session: Session, model: RegisteredModel) -> ModelVersion | None:
    """The pinned version if an operator pinned one, else the best."""
    if model.pinned_version is not None:
        pinned = session.scalar(
            select(ModelVersion).where(
                ModelVersion.model_name == model.name, ModelVersion.version == model.pinned_version
            )
        )
        if pinned is not None:
            return pinned
    return best_version(session, model.name)


def resolve_version(session: Session, name: str | None, version: int | None) -> ModelVersion:
    """The version /predict should use for (name, version); a clear 4xx when there is none."""
    if name is None:
        models = list_models(session)
        if not models:
            raise NoModelAvailable("no model has been trained yet: POST /jobs and wait for it to succeed")
        if len(models) > 1:
            names = [m.name for m in models]
            if "default" not in names:
                raise InvalidInput(f"several models exist; name one with `model`: {names}")
            name = "default"
        else:
            name = models[0].name
    model = get_model(session, name)
    if version is not None:
        chosen = session.scalar(
            select(ModelVersion).where(ModelVersion.model_name == name, ModelVersion.version == version)
        )
        if chosen is None:
            raise NotFound(f"model {name!r} has no version {version}")
        return chosen
    chosen = serving_version(session, model)
    if chosen is None:
        raise NoModelAvailable(f"model {name!r} has no trained version yet")
    return chosen


def promote(session: Session, name: str, version: int) -> RegisteredModel:
    """Pin version as the one /predict serves for name, whatever later jobs score."""
    model = get_model(session, name)
    exists = session.scalar(
        select(ModelVersion.id).where(ModelVersion.model_name == name, ModelVersion.version == version)
    )
    if exists is None:
        raise NotFound(f"model {name!r} has no version {version}")
    model.pinned_version = version
    session.flush()
    return model


def unpin(session: Session, name: str) -> RegisteredModel:
    """Go back to serving the best version."""
    model = get_model(session, name)
    model.pinned_version = None
    session.flush()
    return model
