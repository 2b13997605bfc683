"""GET /models, promote / unpin versions (the caller's project only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.deps import ReadCaller, SessionDep, TrainCaller
from app.api.docs import errors
from app.models import RegisteredModel
from app.schemas import MAX_VERSION, ModelOut, ModelVersionOut
from app.services import registry

router = APIRouter(prefix="/models", tags=["models"])

ModelName = Annotated[str, Path(max_length=100, description="a model name of the caller's project")]
Version = Annotated[int, Path(ge=1, le=MAX_VERSION)]


def to_out(session: SessionDep, model: RegisteredModel) -> ModelOut:
    serving = registry.serving_version(session, model)
    versions = []
    for v in model.versions:
        out = ModelVersionOut.model_validate(v)
        out.serving = serving is not None and v.version == serving.version
        versions.append(out)
    return ModelOut(
        name=model.name,
        pinned_version=model.pinned_version,
        serving_version=serving.version if serving else None,
        versions=versions,
    )


@router.get("", response_model=list[ModelOut], responses=errors())
def list_models(caller: ReadCaller, session: SessionDep) -> list[ModelOut]:
    return [to_out(session, m) for m in registry.list_models(session, caller.project)]


@router.get("/{name}", response_model=ModelOut, responses=errors(404))
def get_model(name: ModelName, caller: ReadCaller, session: SessionDep) -> ModelOut:
    return to_out(session, registry.get_model(session, caller.project, name))


@router.post("/{name}/versions/{version}/promote", response_model=ModelOut, responses=errors(404, 429))
def promote_version(name: ModelName, version: Version, caller: TrainCaller, session: SessionDep) -> ModelOut:
    """Pin a version: /predict serves it until unpinned, whatever later jobs score."""
    return to_out(session, registry.promote(session, caller, name, version))


@router.delete("/{name}/pin", response_model=ModelOut, responses=errors(404, 429))
def unpin_model(name: ModelName, caller: TrainCaller, session: SessionDep) -> ModelOut:
    """Serve the best version again."""
    return to_out(session, registry.unpin(session, caller, name))
