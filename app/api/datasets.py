"""POST/GET /datasets."""

from __future__ import annotations

import uuid
from typing import Annotated, cast

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.deps import AdminCaller, ReadCaller, SessionDep, SettingsDep, TrainCaller
from app.api.docs import errors
from app.api.uploads import DATASET_UPLOAD_OPENAPI, read_dataset_form
from app.db import session_scope
from app.models import Dataset
from app.schemas import (
    MAX_OFFSET,
    DatasetFormat,
    DatasetOut,
    DatasetRegister,
    DatasetSamples,
    DatasetSource,
    Page,
)
from app.services import audit, dataset_images, quotas
from app.services import datasets as service

router = APIRouter(prefix="/datasets", tags=["datasets"])


def to_out(d: Dataset) -> DatasetOut:
    return DatasetOut(
        id=d.id,
        name=d.name,
        format=cast(DatasetFormat, d.format),
        source=cast(DatasetSource, d.source),
        class_names=d.class_names,
        num_classes=len(d.class_names),
        num_images=d.num_images,
        split_counts=d.split_counts,
        invalid_files=d.invalid_files,
        size_bytes=d.size_bytes,
        created_at=d.created_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload a dataset archive",
    responses=errors(413, 415, 422, 429),
    openapi_extra=DATASET_UPLOAD_OPENAPI,
)
def upload_dataset(request: Request, caller: TrainCaller, session: SessionDep, settings: SettingsDep) -> DatasetOut:
    """Upload a zip in ImageFolder layout (`<class>/<image>`, optionally under train/ val/ test/) or a
    CIFAR-10 python folder (`cifar-10-batches-py`, zipped or as .tar.gz)."""
    # The body is read only here, after the dependencies (the key check) passed, and streamed to disk.
    # 413 before reading a byte when the quota is spent; in a short session of its own, so that no connection
    # stays open while the body streams.
    with session_scope(request.app.state.sessionmaker) as quota_session:
        quotas.storage_left(quota_session, settings, caller.project)
    form = read_dataset_form(request, settings)
    dataset = service.ingest_saved_upload(
        session, settings, form.path, form.filename, form.name, form.skip_invalid, caller.project
    )
    audit.record(session, caller, "dataset.upload", "dataset", dataset.id, {"name": dataset.name})
    return to_out(dataset)


@router.post(
    "/register",
    status_code=201,
    response_model=DatasetOut,
    summary="Register a server directory",
    responses=errors(403, 422, 429),
)
def register_dataset(
    body: DatasetRegister, caller: AdminCaller, session: SessionDep, settings: SettingsDep
) -> DatasetOut:
    """Index a dataset already on the server's disk (under VISIONTUNE_DATASET_ROOT) into the admin's project;
    nothing is copied. Admin keys only."""
    dataset = service.register_directory(session, settings, body.path, body.name, body.skip_invalid, caller.project)
    audit.record(session, caller, "dataset.register", "dataset", dataset.id, {"name": dataset.name})
    return to_out(dataset)


@router.api_route("/register", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def register_other_methods() -> None:
    """/datasets/register is POST only (without this, GET would be read as GET /datasets/{dataset_id})."""
    raise StarletteHTTPException(405, headers={"Allow": "POST"})


@router.get("", response_model=Page[DatasetOut], responses=errors())
def list_datasets(
    caller: ReadCaller,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[DatasetOut]:
    rows, total = service.list_datasets(session, caller.project, limit, offset)
    return Page(items=[to_out(d) for d in rows], total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=errors(404))
def get_dataset(dataset_id: uuid.UUID, caller: ReadCaller, session: SessionDep) -> DatasetOut:
    return to_out(service.get_dataset(session, caller.project, dataset_id))


@router.delete("/{dataset_id}", status_code=204, responses=errors(404, 409, 429))
def delete_dataset(dataset_id: uuid.UUID, caller: TrainCaller, session: SessionDep) -> Response:
    """Delete a dataset and its files; 409 while a queued or running job uses it (finished jobs keep their
    results and checkpoints)."""
    service.delete_dataset(session, caller, dataset_id)
    return Response(status_code=204)


@router.get("/{dataset_id}/samples", response_model=DatasetSamples, responses=errors(404, 422, 503))
def dataset_samples(
    request: Request,
    dataset_id: uuid.UUID,
    caller: ReadCaller,
    settings: SettingsDep,
    per_class: Annotated[int, Query(ge=1, le=16, description="image refs per class")] = 4,
    split: Annotated[str, Query(max_length=20, description="one of the dataset's splits")] = "train",
) -> DatasetSamples:
    """Each class of a split with its image count and a few image refs, spread over the class (the same ones
    every time); show them with GET /datasets/{id}/images/{ref}. 503 with Retry-After while the server is busy
    building other datasets' indexes."""
    # No session of the request's: the dataset's row is read in a short one, closed before the index is built.
    factory = request.app.state.sessionmaker
    return dataset_images.samples(factory, settings, caller.project, dataset_id, split, per_class)


JPEG = {"content": {"image/jpeg": {}}, "description": "JPEG thumbnail"}


@router.get("/{dataset_id}/images/{ref}", response_class=Response, responses={200: JPEG, **errors(404, 422, 503)})
def dataset_image(
    request: Request,
    dataset_id: uuid.UUID,
    ref: Annotated[int, Path(ge=0, le=MAX_OFFSET, description="the image's number in the dataset")],
    caller: ReadCaller,
    settings: SettingsDep,
    size: Annotated[
        int,
        Query(
            ge=16,
            le=256,
            description="longest side in pixels, at most (never enlarged): served at the largest of "
            "16, 24, 32, 48, 64, 96, 128, 192, 256 not above it",
        ),
    ] = 96,
) -> Response:
    """A thumbnail of one image of the dataset, by the ref the samples and confusion routes give. 422 for an image
    of more than VISIONTUNE_MAX_PREDICT_PIXELS pixels; 503 with Retry-After while the server is decoding as many
    images as it allows at once."""
    # No session of the request's: the dataset's row is read in a short one, closed before anything is decoded.
    factory = request.app.state.sessionmaker
    body = dataset_images.thumbnail(factory, settings, caller.project, dataset_id, ref, size)
    return Response(
        body,
        media_type=dataset_images.THUMBNAIL_MEDIA_TYPE,
        headers={"Cache-Control": dataset_images.THUMBNAIL_CACHE_CONTROL},
    )
