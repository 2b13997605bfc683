"""POST/GET /datasets."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile

from app.api.deps import SessionDep, SettingsDep
from app.errors import InvalidInput
from app.models import Dataset
from app.schemas import DatasetOut, DatasetRegister, Page
from app.services import datasets as service

router = APIRouter(prefix="/datasets", tags=["datasets"])


def to_out(d: Dataset) -> DatasetOut:
    return DatasetOut(
        id=d.id,
        name=d.name,
        format=d.format,
        source=d.source,
        class_names=d.class_names,  # type: ignore[arg-type]
        num_classes=len(d.class_names),
        num_images=d.num_images,
        split_counts=d.split_counts,
        invalid_files=d.invalid_files,
        created_at=d.created_at,
    )


@router.post("", status_code=201, response_model=DatasetOut, summary="Upload a dataset archive")
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile | None, File(description="zip (ImageFolder or CIFAR python) or tar.gz")] = None,
    name: Annotated[str | None, Form(max_length=200)] = None,
    skip_invalid: Annotated[bool, Form(description="Leave unreadable images out instead of refusing")] = False,
) -> DatasetOut:
    """Upload a zip in ImageFolder layout (`<class>/<image>`, optionally under train/ val/ test/) or a
    CIFAR-10 python folder (`cifar-10-batches-py`, zipped or as .tar.gz)."""
    if file is None:
        raise InvalidInput("send the dataset archive as the multipart field `file`")
    return to_out(service.ingest_upload(session, settings, file.file, file.filename, name, skip_invalid))


@router.post("/register", status_code=201, response_model=DatasetOut, summary="Register a server directory")
def register_dataset(body: DatasetRegister, session: SessionDep, settings: SettingsDep) -> DatasetOut:
    """Index a dataset already on the server's disk (under VISIONTUNE_DATASET_ROOT); nothing is copied."""
    return to_out(service.register_directory(session, settings, body.path, body.name, body.skip_invalid))


@router.get("", response_model=Page[DatasetOut])
def list_datasets(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[DatasetOut]:
    rows, total = service.list_datasets(session, limit, offset)
    return Page(items=[to_out(d) for d in rows], total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: uuid.UUID, session: SessionDep) -> DatasetOut:
    return to_out(service.get_dataset(session, dataset_id))
