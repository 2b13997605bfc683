"""Request and response models: the public API contract."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    format: Literal["imagefolder", "cifar10"]
    source: Literal["upload", "local"]
    class_names: list[str]
    num_classes: int
    num_images: int
    split_counts: dict[str, dict[str, int]] = Field(description="split -> class -> number of images")
    invalid_files: list[dict[str, str]] = Field(description="files left out, each with the reason")
    created_at: datetime


class DatasetRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Directory on the server, under VISIONTUNE_DATASET_ROOT")
    name: str | None = Field(default=None, max_length=200)
    skip_invalid: bool = Field(default=False, description="Leave unreadable images out instead of refusing")


class JobCreate(BaseModel):
    """A fine-tuning job. Unknown fields are refused so that a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    dataset_id: uuid.UUID
    model_name: str = Field(
        default="default", pattern=MODEL_NAME_PATTERN, description="Registered model whose versions compete"
    )
    arch: str = Field(
        default="efficientnet_lite0",
        description="resnet18|resnet34|resnet50|mobilenet_v3_large|efficientnet_b0|convnext_tiny|vit_b_16|"
        "efficientnet_lite0|timm/<name>",
    )
    weights: str = Field(default="imagenet", description="'imagenet', 'none', or a weights file on the server")
    strategy: Literal["linear", "partial", "full"] = Field(
        default="linear",
        description="linear: frozen backbone (features cached, no augmentation); partial: the last "
        "`unfreeze_stages` stages train; full: everything trains",
    )
    unfreeze_stages: int = Field(default=1, ge=1, le=64)
    epochs: int = Field(default=5, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(default=0.0, ge=0, le=100)
    label_smoothing: float = Field(default=0.0, ge=0, le=0.5)
    grad_clip: float | None = Field(default=None, gt=0)
    image_size: int = Field(default=224, ge=16, le=1024)
    augment: bool = Field(default=True, description="Random resized crop + flip (ignored by linear)")
    val_fraction: float = Field(default=0.1, ge=0, le=0.5, description="Held out of train when there is no val")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    num_workers: int | None = Field(default=None, ge=0, le=64, description="DataLoader workers; auto if unset")


class EpochOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    learning_rate: float
    seconds: float
    images_per_second: float


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    epoch: int
    val_accuracy: float | None
    sha256: str
    size_bytes: int


class JobSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: uuid.UUID
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    dataset_id: uuid.UUID
    model_name: str
    arch: str
    weights: str
    strategy: str
    attempt: int
    error: str | None
    best_epoch: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobDetail(JobSummary):
    config: dict[str, Any]
    cancel_requested: bool
    epochs: list[EpochOut]
    best_checkpoint: CheckpointOut | None = None
    val_metrics: dict[str, Any] | None
    test_metrics: dict[str, Any] | None
    model_version: int | None = None


class ModelVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    job_id: uuid.UUID
    arch: str
    val_accuracy: float | None
    test_accuracy: float | None
    created_at: datetime
    serving: bool = False


class ModelOut(BaseModel):
    name: str
    pinned_version: int | None
    serving_version: int | None
    versions: list[ModelVersionOut]


class LabelScore(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    filename: str | None
    top: list[LabelScore]


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    version: int
    job_id: uuid.UUID
    arch: str
    predictions: list[ImagePrediction]
