"""Request and response models: the public API contract."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from app.ml.config import TrainConfig, TrainingOptions

T = TypeVar("T")

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
MAX_OFFSET = 2**31 - 1  # pagination offsets and version numbers above this answer 422, never a database error
MAX_VERSION = 2**31 - 1
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"  # e.g. production, staging; /predict takes `model=name@alias`


DatasetFormat = Literal["imagefolder", "cifar10"]
DatasetSource = Literal["upload", "local"]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    format: DatasetFormat
    source: DatasetSource
    class_names: list[str]
    num_classes: int
    num_images: int
    split_counts: dict[str, dict[str, int]] = Field(description="split -> class -> number of images")
    invalid_files: list[dict[str, str]] = Field(description="files left out, each with the reason")
    size_bytes: int = Field(description="bytes it keeps on disk (counts towards the project's storage quota)")
    created_at: datetime


class DatasetRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(max_length=4096, description="Directory on the server, under VISIONTUNE_DATASET_ROOT")
    name: str | None = Field(default=None, max_length=200)
    skip_invalid: StrictBool = Field(default=False, description="Leave unreadable images out instead of refusing")


class _JobHead(BaseModel):
    """The job-level fields that come before the training settings (in the schema and in 422 messages)."""

    dataset_id: uuid.UUID
    model_name: str = Field(
        default="default", pattern=MODEL_NAME_PATTERN, description="Registered model whose versions compete"
    )


class _JobTail(BaseModel):
    """The job-level fields that come after the training settings."""

    exports: list[Literal["onnx", "onnx-int8"]] = Field(
        default_factory=list,
        max_length=2,
        description="exports made on a worker when the job succeeds, each verified against the fp32 model on the "
        "validation (and test) split before it may be served: onnx, onnx-int8 (static int8, calibrated on a few "
        "hundred training images)",
    )
    max_attempts: StrictInt | None = Field(
        default=None,
        ge=1,
        le=20,
        description="attempts before a job whose worker keeps dying (or hits transient errors) fails; "
        "default: the server's VISIONTUNE_MAX_ATTEMPTS (3)",
    )


# Bases in this order give the fields in the public order: _JobHead's, the training settings, _JobTail's.
class JobCreate(_JobTail, TrainingOptions, _JobHead):
    """A fine-tuning job. Unknown fields are refused so that a typo never silently falls back to a default;
    numbers and booleans must be JSON numbers and booleans (`"epochs": true` or `"5"` is refused)."""


# What a job adds to its training settings; `training_config` sets exactly these aside.
JOB_FIELDS = frozenset(_JobHead.model_fields) | frozenset(_JobTail.model_fields)
# Keys of stored jobs that no release after 2026-11-22 reads: `augment` was replaced by `augmentation` the day it
# came, and the worker has ignored it since, so rows that still carry it keep training as they did.
RETIRED_FIELDS = frozenset({"augment"})


def training_config(job_config: dict[str, Any]) -> TrainConfig:
    """The training config of a stored job (`Job.config`: the request as submitted, weights resolved): the
    job-level fields are set aside and everything else must be a valid training setting (an unknown key raises)."""
    settings = {k: v for k, v in job_config.items() if k not in JOB_FIELDS | RETIRED_FIELDS}
    return TrainConfig.model_validate(settings)


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
    tflops: float | None = Field(default=None, description="achieved model TFLOP/s while training")
    mfu: float | None = Field(default=None, description="model FLOP utilisation (known GPUs only)")


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
    dataset_id: uuid.UUID | None = Field(description="None once the dataset was deleted (finished jobs only)")
    model_name: str
    arch: str
    weights: str
    strategy: str
    attempt: int = Field(description="claims so far (the fencing token of the current worker)")
    failures: int = Field(description="attempts lost to a crashed worker or a transient error")
    max_attempts: int
    retry_after: datetime | None = Field(description="a retried job waits in `queued` until then")
    last_epoch: int | None = Field(description="last epoch with a resumable checkpoint")
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
    baseline_metrics: dict[str, Any] | None = Field(
        default=None, description="val/test metrics before fine-tuning (pretrained backbone, one probe pass)"
    )
    model_version: int | None = None


class JobMetrics(BaseModel):
    """Everything measured for a job: the epoch history, the best epoch on val/test, and the before-model."""

    job_id: uuid.UUID
    status: str
    best_epoch: int | None
    epochs: list[EpochOut]
    val: dict[str, Any] | None
    test: dict[str, Any] | None
    before_finetuning: dict[str, Any] | None
    flops_per_image: float | None


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
    pinned_backend: str | None = Field(default=None, description="the backend the pin asks for; None: the default")
    serving_version: int | None
    aliases: dict[str, int] = Field(
        default_factory=dict, description="alias -> version; `/predict` serves one with `model=name@alias`"
    )
    alias_backends: dict[str, str] = Field(
        default_factory=dict, description="alias -> the backend it asks for (aliases with none are left out)"
    )
    versions: list[ModelVersionOut]


class AliasSet(BaseModel):
    """Point an alias at a version (created if it does not exist, else moved)."""

    model_config = ConfigDict(extra="forbid")

    version: StrictInt = Field(ge=1, le=MAX_VERSION)
    backend: Literal["torch", "onnx", "int8"] | None = Field(
        default=None, description="serve it with this backend (when that export is verified); default: the server's"
    )


class PromoteRequest(BaseModel):
    """Optional body of a promotion."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["torch", "onnx", "int8"] | None = Field(
        default=None, description="serve the pinned version with this backend (when that export is verified)"
    )


class RollbackRequest(BaseModel):
    """What to roll back: an alias, or the pin when left out."""

    model_config = ConfigDict(extra="forbid")

    alias: str | None = Field(default=None, pattern=ALIAS_PATTERN, description="the pin if left out")


class ServingChangeOut(BaseModel):
    """One change of a model's pin or of one of its aliases; a version of None means unset."""

    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: int
    at: datetime
    model_name: str
    target: str = Field(description="`pin` or `alias:<name>`")
    action: Literal["pin", "unpin", "alias", "alias-delete", "rollback"]
    from_version: int | None
    to_version: int | None
    key_id: uuid.UUID | None = Field(description="the API key that made the change (None: the server's CLI)")
    actor: str = Field(description="that key's name")


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
    backend: str = Field(description="The serving backend that answered, e.g. `torch`")
    predictions: list[ImagePrediction]


class KeyCreate(BaseModel):
    """A new API key; admins may make one for any project (made if it does not exist yet)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="what the key is for, e.g. 'ci' or 'alice'")
    scopes: list[Literal["admin", "train", "predict", "read"]] = Field(
        min_length=1,
        max_length=4,
        description="admin: everything, every project; train: datasets, jobs and models of its project (and read); "
        "predict: /predict; read: read its project's datasets, jobs and models",
    )
    project: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="the key's project; default: the calling key's own",
    )
    expires_at: datetime | None = Field(default=None, description="when the key stops working (UTC); never if unset")


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    project: str
    prefix: str = Field(
        description="the key's first characters, to tell keys apart (the key itself is never shown again)"
    )
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="the API key: shown this once, stored only as a keyed hash")


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    project: str
    key_id: uuid.UUID | None
    actor: str
    action: str
    object_type: str
    object_id: str
    details: dict[str, Any] | None


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "onnx-int8"] = Field(description="onnx: fp32 ONNX; onnx-int8: static int8 QDQ")


class ExportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    format: str
    status: Literal["queued", "running", "verified", "rejected", "failed"] = Field(
        description="verified: may be served; rejected: failed verification, never served; failed: not made"
    )
    sha256: str | None
    size_bytes: int | None
    meta: dict[str, Any] | None = Field(description="class names, preprocessing, image size, input and output")
    report: dict[str, Any] | None = Field(
        description="per split (val, test): images, top-1 agreement with fp32, accuracy, fp32 accuracy, passed"
    )
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class ClassSamples(BaseModel):
    index: int
    name: str
    count: int = Field(description="images of this class in the split")
    samples: list[int] = Field(description="image refs (GET /datasets/{id}/images/{ref}), spread over the class")


class DatasetSamples(BaseModel):
    dataset_id: uuid.UUID
    split: str
    per_class: int
    classes: list[ClassSamples]


class ClassRef(BaseModel):
    index: int
    name: str


class ConfusionImage(BaseModel):
    ref: int = Field(description="the image's ref in the job's dataset (GET /datasets/{id}/images/{ref})")
    confidence: float = Field(description="the probability the best checkpoint gave the predicted class")


class ConfusionCell(BaseModel):
    """The validation images of one confusion-matrix cell of the job's best checkpoint, most confident first."""

    model_config = ConfigDict(populate_by_name=True)

    job_id: uuid.UUID
    dataset_id: uuid.UUID | None
    true: ClassRef
    predicted: ClassRef
    total: int = Field(description="images in this cell (the confusion matrix's count)")
    limit: int
    offset: int
    items: list[ConfusionImage]


class JobEstimate(BaseModel):
    images_per_epoch: int = Field(description="training images per epoch (after holding out val_fraction)")
    epochs: int
    tflops: float | None = Field(description="the job's training cost in TFLOPs (the quota's estimate)")
    seconds: float | None = Field(description="estimated training time; null without measured history")
    basis: str = Field(description="how seconds was estimated")
    images_per_second: float | None = Field(default=None, description="the training rate the estimate assumes")
    history_epochs: int = Field(default=0, description="measured epochs the estimate rests on")
