"""POST/GET /models/{name}/versions/{version}/exports: ONNX and int8 exports, made on a worker and verified."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse

from app.api.deps import ReadCaller, SessionDep, TrainCaller
from app.api.docs import errors
from app.schemas import MAX_VERSION, ExportCreate, ExportOut
from app.services import exports as service

router = APIRouter(prefix="/models", tags=["models"])

ModelName = Annotated[str, Path(max_length=100)]
Version = Annotated[int, Path(ge=1, le=MAX_VERSION)]
Format = Literal["onnx", "onnx-int8"]
BASE = "/{name}/versions/{version}/exports"


@router.post(
    BASE,
    status_code=202,
    response_model=ExportOut,
    responses={200: {"description": "this export exists already"}, **errors(404, 429)},
)
def request_export(
    name: ModelName,
    version: Version,
    body: ExportCreate,
    caller: TrainCaller,
    session: SessionDep,
    request: Request,
    response: Response,
) -> ExportOut:
    """Queue an export of the version on a worker; it is verified against the fp32 model before it may serve."""
    found = service.version_of(session, caller.project, name, version)
    export, created = service.request_export(session, caller, found, body.format, request.app.state.enqueue_export)
    if not created:
        response.status_code = 200
    return ExportOut.model_validate(export)


@router.get(BASE, response_model=list[ExportOut], responses=errors(404))
def list_exports(name: ModelName, version: Version, caller: ReadCaller, session: SessionDep) -> list[ExportOut]:
    """The version's exports with their status and verification report."""
    found = service.version_of(session, caller.project, name, version)
    return [ExportOut.model_validate(e) for e in service.list_exports(session, found)]


@router.get(
    BASE + "/{format}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file"}, **errors(404, 409)},
)
def download_export(
    name: ModelName, version: Version, format: Format, caller: ReadCaller, session: SessionDep
) -> FileResponse:
    """The export's file (X-Checksum-Sha256 holds its sha256); 409 until it is made."""
    found = service.version_of(session, caller.project, name, version)
    export = service.downloadable(service.get_export(session, found, format))
    filename = f"{name}-v{version}{service.SUFFIX[format]}"
    return FileResponse(
        export.path or "",
        media_type="application/octet-stream",
        filename=filename,
        headers={"X-Checksum-Sha256": export.sha256 or "", "X-Export-Status": export.status},
    )
