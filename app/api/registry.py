"""The model registry's routes: GET /models, promote / unpin versions, aliases, the history of changes and rollback
(the caller's project only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from app.api.deps import ReadCaller, SessionDep, TrainCaller
from app.api.docs import errors
from app.db import after_commit
from app.models import RegisteredModel
from app.schemas import (
    ALIAS_PATTERN,
    MAX_OFFSET,
    MAX_VERSION,
    AliasSet,
    ModelOut,
    ModelVersionOut,
    Page,
    PromoteRequest,
    RollbackRequest,
    ServingChangeOut,
)
from app.services import registry

router = APIRouter(prefix="/models", tags=["models"])

ModelName = Annotated[str, Path(max_length=100, description="a model name of the caller's project")]
Version = Annotated[int, Path(ge=1, le=MAX_VERSION)]
Alias = Annotated[str, Path(pattern=ALIAS_PATTERN, description="e.g. production or staging")]


def to_out(session: SessionDep, model: RegisteredModel) -> ModelOut:
    serving = registry.serving_version(session, model)
    versions = []
    for v in model.versions:
        out = ModelVersionOut.model_validate(v)
        out.serving = serving is not None and v.version == serving.version
        versions.append(out)
    rows = registry.alias_rows(session, model)
    return ModelOut(
        name=model.name,
        pinned_version=model.pinned_version,
        pinned_backend=model.pinned_backend,
        serving_version=serving.version if serving else None,
        aliases={row.alias: row.version for row in rows},
        alias_backends={row.alias: row.backend for row in rows if row.backend},
        versions=versions,
    )


@router.get("", response_model=list[ModelOut], responses=errors())
def list_models(caller: ReadCaller, session: SessionDep) -> list[ModelOut]:
    return [to_out(session, m) for m in registry.list_models(session, caller.project)]


@router.get("/{name}", response_model=ModelOut, responses=errors(404))
def get_model(name: ModelName, caller: ReadCaller, session: SessionDep) -> ModelOut:
    return to_out(session, registry.get_model(session, caller.project, name))


@router.post("/{name}/versions/{version}/promote", response_model=ModelOut, responses=errors(404, 429))
def promote_version(
    name: ModelName,
    version: Version,
    caller: TrainCaller,
    session: SessionDep,
    request: Request,
    body: PromoteRequest | None = None,
) -> ModelOut:
    """Pin a version: /predict serves it until unpinned, whatever later jobs score (loaded and warmed first),
    with the backend the body names (when that export is verified) or the server's default."""
    model = registry.promote(session, caller, name, version, body.backend if body else None)
    warm(request, session, caller.project, name)
    return to_out(session, model)


@router.delete("/{name}/pin", response_model=ModelOut, responses=errors(404, 429))
def unpin_model(name: ModelName, caller: TrainCaller, session: SessionDep, request: Request) -> ModelOut:
    """Serve the best version again."""
    model = registry.unpin(session, caller, name)
    warm(request, session, caller.project, name)
    return to_out(session, model)


@router.put("/{name}/aliases/{alias}", response_model=ModelOut, responses=errors(404, 429))
def set_alias(
    name: ModelName, alias: Alias, body: AliasSet, caller: TrainCaller, session: SessionDep, request: Request
) -> ModelOut:
    """Point an alias at a version (made, or moved): `/predict` serves it with `model=name@alias`."""
    model = registry.set_alias(session, caller, name, alias, body.version, body.backend)
    warm(request, session, caller.project, f"{name}@{alias}")
    return to_out(session, model)


@router.delete("/{name}/aliases/{alias}", response_model=ModelOut, responses=errors(404, 429))
def delete_alias(name: ModelName, alias: Alias, caller: TrainCaller, session: SessionDep, request: Request) -> ModelOut:
    """Remove an alias."""
    model = registry.delete_alias(session, caller, name, alias)
    after_commit(session, request.app.state.serving_targets.forget)
    return to_out(session, model)


@router.get("/{name}/history", response_model=Page[ServingChangeOut], responses=errors(404))
def model_history(
    name: ModelName,
    caller: ReadCaller,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[ServingChangeOut]:
    """Every change of the pin and the aliases (who, when, from, to), newest first."""
    rows, total = registry.history(session, caller.project, name, limit, offset)
    return Page(items=[ServingChangeOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.post("/{name}/rollback", response_model=ModelOut, responses=errors(404, 409, 429))
def rollback(
    name: ModelName, caller: TrainCaller, session: SessionDep, request: Request, body: RollbackRequest | None = None
) -> ModelOut:
    """Move an alias (or, without one, the pin) back to where its latest change moved it from; twice: back again."""
    alias = body.alias if body is not None else None
    model = registry.rollback(session, caller, name, alias)
    warm(request, session, caller.project, f"{name}@{alias}" if alias else name)
    return to_out(session, model)


def warm(request: Request, session: SessionDep, project: str, ref: str) -> None:
    """Load and warm the new serving target in this process before the change commits (see app/serving); once
    it has committed, this process's /predict sees it at once."""
    targets = request.app.state.serving_targets
    targets.warm(session, request.app.state.settings, project, ref)
    after_commit(session, targets.forget)
