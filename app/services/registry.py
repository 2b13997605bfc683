"""Model registry: per project, versions of a named classifier, which one serves, and pins."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import Actor
from app.errors import InvalidInput, NoModelAvailable, NotFound
from app.models import Checkpoint, Job, ModelVersion, RegisteredModel
from app.services import audit


def register_version(session: Session, job: Job, checkpoint: Checkpoint, test_accuracy: float | None) -> ModelVersion:
    """Add the job's best checkpoint as the next version of its project's model name (safe against racing jobs)."""
    if session.get(RegisteredModel, (job.project, job.model_name)) is None:
        try:
            with session.begin_nested():
                session.add(RegisteredModel(project=job.project, name=job.model_name))
        except IntegrityError:
            pass  # another job registered the name first
    for _ in range(10):
        latest = session.scalar(
            select(func.max(ModelVersion.version)).where(
                ModelVersion.project == job.project, ModelVersion.model_name == job.model_name
            )
        )
        version = ModelVersion(
            project=job.project,
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


def get_model(session: Session, project: str, name: str) -> RegisteredModel:
    model = session.get(RegisteredModel, (project, name))
    if model is None:
        raise NotFound(f"model {name[:100]!r} does not exist")
    return model


def list_models(session: Session, project: str) -> list[RegisteredModel]:
    query = select(RegisteredModel).where(RegisteredModel.project == project).order_by(RegisteredModel.name)
    return list(session.scalars(query).all())


def _versions(project: str, name: str):  # type: ignore[no-untyped-def]
    return select(ModelVersion).where(ModelVersion.project == project, ModelVersion.model_name == name)


def best_version(session: Session, project: str, name: str) -> ModelVersion | None:
    """Highest validation accuracy; the newest version breaks ties."""
    return session.scalar(
        _versions(project, name)
        .order_by(ModelVersion.val_accuracy.desc().nulls_last(), ModelVersion.version.desc())
        .limit(1)
    )


def find_version(session: Session, project: str, name: str, version: int) -> ModelVersion | None:
    return session.scalar(_versions(project, name).where(ModelVersion.version == version))


def serving_version(session: Session, model: RegisteredModel) -> ModelVersion | None:
    """The pinned version if one is pinned, else the best."""
    if model.pinned_version is not None:
        pinned = find_version(session, model.project, model.name, model.pinned_version)
        if pinned is not None:
            return pinned
    return best_version(session, model.project, model.name)


def resolve_version(session: Session, project: str, name: str | None, version: int | None) -> ModelVersion:
    """The version /predict should use for (name, version) in project; a clear 4xx when there is none."""
    if name is None:
        models = list_models(session, project)
        if not models:
            raise NoModelAvailable("no model has been trained yet: POST /jobs and wait for it to succeed")
        if len(models) > 1:
            names = [m.name for m in models]
            if "default" not in names:
                raise InvalidInput(f"several models exist; name one with `model`: {names[:50]}")
            name = "default"
        else:
            name = models[0].name
    model = get_model(session, project, name)
    if version is not None:
        chosen = find_version(session, project, name, version)
        if chosen is None:
            raise NotFound(f"model {name!r} has no version {version}")
        return chosen
    chosen = serving_version(session, model)
    if chosen is None:
        raise NoModelAvailable(f"model {name!r} has no trained version yet")
    return chosen


def promote(session: Session, actor: Actor, name: str, version: int) -> RegisteredModel:
    """Pin version as the one /predict serves for name, whatever later jobs score."""
    model = get_model(session, actor.project, name)
    if find_version(session, actor.project, name, version) is None:
        raise NotFound(f"model {name!r} has no version {version}")
    previous = model.pinned_version
    model.pinned_version = version
    session.flush()
    audit.record(session, actor, "model.pin", "model", name, {"from": previous, "to": version})
    return model


def unpin(session: Session, actor: Actor, name: str) -> RegisteredModel:
    """Go back to serving the best version."""
    model = get_model(session, actor.project, name)
    previous = model.pinned_version
    model.pinned_version = None
    session.flush()
    audit.record(session, actor, "model.unpin", "model", name, {"from": previous})
    return model


def forget_version(session: Session, actor: Actor, version: ModelVersion) -> None:
    """Drop a version whose job is being deleted; a pin on it is lifted (the best version serves again)."""
    model = session.get(RegisteredModel, (version.project, version.model_name))
    if model is not None and model.pinned_version == version.version:
        model.pinned_version = None
        audit.record(session, actor, "model.unpin", "model", model.name, {"from": version.version, "reason": "deleted"})
    session.delete(version)
    session.flush()
