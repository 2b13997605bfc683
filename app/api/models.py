"""GET /models, promote / unpin versions."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SessionDep
from app.models import RegisteredModel
from app.schemas import ModelOut, ModelVersionOut
from app.services import registry

router = APIRouter(prefix="/models", tags=["models"])


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


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep) -> list[ModelOut]:
    return [to_out(session, m) for m in registry.list_models(session)]


@router.get("/{name}", response_model=ModelOut)
def get_model(name: str, session: SessionDep) -> ModelOut:
    return to_out(session, registry.get_model(session, name))


@router.post("/{name}/versions/{version}/promote", response_model=ModelOut)
def promote_version(name: str, version: int, session: SessionDep) -> ModelOut:
    """Pin a version: /predict serves it until unpinned, whatever later jobs score."""
    return to_out(session, registry.promote(session, name, version))


@router.delete("/{name}/pin", response_model=ModelOut)
def unpin_model(name: str, session: SessionDep) -> ModelOut:
    """Serve the best version again."""
    return to_out(session, registry.unpin(session, name))
