"""Model registry: per project, versions of a named classifier, which one serves, pins and aliases, and the
history of their changes (what a rollback reads)."""

from __future__ import annotations

import re

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import Actor
from app.errors import Conflict, InvalidInput, NoModelAvailable, NotFound
from app.models import Checkpoint, Job, ModelAlias, ModelVersion, RegisteredModel, ServingChange
from app.schemas import ALIAS_PATTERN
from app.services import audit

PIN = "pin"  # the target of pin changes; an alias's is "alias:<name>"
_ALIAS = re.compile(ALIAS_PATTERN.removeprefix("^").removesuffix("$"))  # fullmatch: `$` would allow a newline


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


def _versions(project: str, name: str) -> Select[ModelVersion]:
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


def split_alias(name: str) -> tuple[str, str | None]:
    """`pets@production` -> ("pets", "production"); a name without `@` has no alias."""
    base, sep, alias = name.partition("@")
    if not sep:
        return name, None
    if not _ALIAS.fullmatch(alias):
        raise InvalidInput(f"the alias after '@' must match {ALIAS_PATTERN}")
    return base, alias


def resolve_version(session: Session, project: str, name: str | None, version: int | None) -> ModelVersion:
    """The version /predict should use for (name, version) in project; a clear 4xx when there is none.

    name may be `name@alias` (that alias's version); otherwise the pinned version, else the best.
    """
    return resolve_target(session, project, name, version)[0]


def resolve_target(
    session: Session, project: str, name: str | None, version: int | None
) -> tuple[ModelVersion, str | None]:
    """resolve_version and the backend the alias or pin that chose it asks for (None: the server's default)."""
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
    name, alias = split_alias(name)
    model = get_model(session, project, name)
    if alias is not None:
        if version is not None:
            raise InvalidInput("give either an alias (`model=name@alias`) or a `version`, not both")
        row = session.get(ModelAlias, (project, name, alias))
        if row is None:
            raise NotFound(f"model {name!r} has no alias {alias!r}")
        chosen = find_version(session, project, name, row.version)
        if chosen is None:  # the foreign key makes this impossible; kept as a clear answer
            raise NotFound(f"model {name!r} has no version {row.version}")
        return chosen, row.backend
    if version is not None:
        chosen = find_version(session, project, name, version)
        if chosen is None:
            raise NotFound(f"model {name!r} has no version {version}")
        return chosen, None
    chosen = serving_version(session, model)
    if chosen is None:
        raise NoModelAvailable(f"model {name!r} has no trained version yet")
    pinned = model.pinned_version is not None and chosen.version == model.pinned_version
    return chosen, model.pinned_backend if pinned else None


def aliases(session: Session, model: RegisteredModel) -> dict[str, int]:
    """alias -> version, by alias name."""
    return {row.alias: row.version for row in alias_rows(session, model)}


def alias_rows(session: Session, model: RegisteredModel) -> list[ModelAlias]:
    query = select(ModelAlias).where(ModelAlias.project == model.project, ModelAlias.model_name == model.name)
    return list(session.scalars(query.order_by(ModelAlias.alias)).all())


def history(session: Session, project: str, name: str, limit: int, offset: int) -> tuple[list[ServingChange], int]:
    """The model's pin and alias changes, newest first."""
    get_model(session, project, name)
    where = (ServingChange.project == project, ServingChange.model_name == name)
    total = session.scalar(select(func.count()).select_from(ServingChange).where(*where)) or 0
    rows = session.scalars(
        select(ServingChange).where(*where).order_by(ServingChange.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(rows), total


def _locked_model(session: Session, project: str, name: str) -> RegisteredModel:
    """The model row, locked until the unit of work ends (PostgreSQL), so its changes and their history
    (each change's `from`) are serialized."""
    model = session.get(RegisteredModel, (project, name), with_for_update=True, populate_existing=True)
    if model is None:
        raise NotFound(f"model {name[:100]!r} does not exist")
    return model


def _existing_version(session: Session, project: str, name: str, version: int) -> None:
    if find_version(session, project, name, version) is None:
        raise NotFound(f"model {name!r} has no version {version}")


def _record_change(
    session: Session,
    actor: Actor,
    model: RegisteredModel,
    target: str,
    action: str,
    before: int | None,
    after: int | None,
) -> None:
    session.add(
        ServingChange(
            project=model.project,
            model_name=model.name,
            target=target,
            from_version=before,
            to_version=after,
            action=action,
            key_id=actor.key_id,
            actor=actor.name[:120],
        )
    )


def _set_pin(
    session: Session, actor: Actor, model: RegisteredModel, version: int | None, action: str, backend: str | None = None
) -> None:
    previous = model.pinned_version
    model.pinned_version = version
    model.pinned_backend = backend if version is not None else None
    if previous != version:
        _record_change(session, actor, model, PIN, action, previous, version)
    session.flush()


def _set_alias(
    session: Session,
    actor: Actor,
    model: RegisteredModel,
    alias: str,
    version: int | None,
    action: str,
    backend: str | None = None,
) -> int | None:
    """Point alias at version (None: remove it); records the change; returns the previous version."""
    row = session.get(ModelAlias, (model.project, model.name, alias))
    previous = row.version if row is not None else None
    if version is None and row is not None:
        session.delete(row)
    elif version is not None and row is None:
        session.add(
            ModelAlias(project=model.project, model_name=model.name, alias=alias, version=version, backend=backend)
        )
    elif version is not None and row is not None:
        row.version, row.backend = version, backend
    if previous != version:
        _record_change(session, actor, model, f"alias:{alias}", action, previous, version)
    session.flush()
    return previous


def promote(session: Session, actor: Actor, name: str, version: int, backend: str | None = None) -> RegisteredModel:
    """Pin version as the one /predict serves for name, whatever later jobs score (with backend, if given)."""
    model = _locked_model(session, actor.project, name)
    _existing_version(session, actor.project, name, version)
    previous = model.pinned_version
    _set_pin(session, actor, model, version, "pin", backend)
    audit.record(session, actor, "model.pin", "model", name, {"from": previous, "to": version})
    return model


def unpin(session: Session, actor: Actor, name: str) -> RegisteredModel:
    """Go back to serving the best version."""
    model = _locked_model(session, actor.project, name)
    previous = model.pinned_version
    _set_pin(session, actor, model, None, "unpin")
    audit.record(session, actor, "model.unpin", "model", name, {"from": previous})
    return model


def set_alias(
    session: Session, actor: Actor, name: str, alias: str, version: int, backend: str | None = None
) -> RegisteredModel:
    """Create alias, or move it, to version (served with backend, if given)."""
    model = _locked_model(session, actor.project, name)
    _existing_version(session, actor.project, name, version)
    previous = _set_alias(session, actor, model, alias, version, "alias", backend)
    audit.record(session, actor, "model.alias", "model", name, {"alias": alias, "from": previous, "to": version})
    return model


def delete_alias(session: Session, actor: Actor, name: str, alias: str) -> RegisteredModel:
    """Remove alias (404 if the model has none of that name)."""
    model = _locked_model(session, actor.project, name)
    if session.get(ModelAlias, (model.project, name, alias)) is None:
        raise NotFound(f"model {name!r} has no alias {alias!r}")
    previous = _set_alias(session, actor, model, alias, None, "alias-delete")
    audit.record(session, actor, "model.alias_delete", "model", name, {"alias": alias, "from": previous})
    return model


def rollback(session: Session, actor: Actor, name: str, alias: str | None) -> RegisteredModel:
    """Move alias (or the pin) back to the `from` of its latest change; a rollback is a change too, so a second
    one undoes the first. 409 when there is no change to go back from, or its version was deleted since."""
    model = _locked_model(session, actor.project, name)
    target = PIN if alias is None else f"alias:{alias}"
    what = "the pin" if alias is None else f"alias {alias!r}"
    latest = session.scalar(
        select(ServingChange)
        .where(
            ServingChange.project == model.project,
            ServingChange.model_name == name,
            ServingChange.target == target,
        )
        .order_by(ServingChange.id.desc())
        .limit(1)
    )
    if latest is None:
        raise Conflict(f"nothing to roll back: {what} of model {name!r} has never changed")
    back_to = latest.from_version
    if back_to is not None and find_version(session, model.project, name, back_to) is None:
        raise Conflict(f"cannot roll back {what} of model {name!r}: its previous version {back_to} was deleted")
    if alias is None:
        previous = model.pinned_version
    else:
        row = session.get(ModelAlias, (model.project, name, alias))
        previous = row.version if row is not None else None
    if previous == back_to:
        raise Conflict(f"nothing to roll back: {what} of model {name!r} is already at its previous value")
    if alias is None:
        _set_pin(session, actor, model, back_to, "rollback")
    else:
        _set_alias(session, actor, model, alias, back_to, "rollback")
    audit.record(session, actor, "model.rollback", "model", name, {"target": target, "from": previous, "to": back_to})
    return model


def forget_version(session: Session, actor: Actor, version: ModelVersion) -> None:
    """Drop a version whose job is being deleted; a pin on it is lifted (the best version serves again) and the
    aliases pointing at it are removed, each change in the history."""
    model = session.get(RegisteredModel, (version.project, version.model_name))
    if model is not None:
        if model.pinned_version == version.version:
            _set_pin(session, actor, model, None, "unpin")
            audit.record(
                session, actor, "model.unpin", "model", model.name, {"from": version.version, "reason": "deleted"}
            )
        pointing = session.scalars(
            select(ModelAlias.alias).where(
                ModelAlias.project == model.project,
                ModelAlias.model_name == model.name,
                ModelAlias.version == version.version,
            )
        ).all()
        for alias in pointing:
            _set_alias(session, actor, model, alias, None, "alias-delete")
            audit.record(
                session,
                actor,
                "model.alias_delete",
                "model",
                model.name,
                {"alias": alias, "from": version.version, "reason": "deleted"},
            )
    session.delete(version)
    session.flush()
