"""The SQL schema: projects and their API keys, datasets, jobs, epochs, checkpoints, registered models, their
versions and aliases, the history of what serves, and the audit log."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


TERMINAL_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


DEFAULT_PROJECT = "default"


class Project(Base):
    """A tenant: every dataset, job, model, version, pin and key belongs to one."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An API key: only its HMAC is stored; the plaintext is shown once, when it is created."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell keys apart in lists
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """One change: who (key), what (action), on which object, when."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor: Mapped[str] = mapped_column(String(120))  # the key's name, or "cli" for server-side commands
    action: Mapped[str] = mapped_column(String(50))
    object_type: Mapped[str] = mapped_column(String(30))
    object_id: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project: Mapped[str] = mapped_column(
        ForeignKey("projects.name", ondelete="RESTRICT"), index=True, default=DEFAULT_PROJECT
    )
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(20))  # imagefolder | cifar10
    source: Mapped[str] = mapped_column(String(20))  # upload | local
    path: Mapped[str] = mapped_column(Text)  # root the manifest's relative paths start from
    class_names: Mapped[list[str]] = mapped_column(JSON)
    split_counts: Mapped[dict[str, dict[str, int]]] = mapped_column(JSON)  # split -> class -> images
    num_images: Mapped[int] = mapped_column(Integer)
    invalid_files: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # counts to the quota
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("project", "idempotency_key", name="uq_jobs_project_idempotency_key"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project: Mapped[str] = mapped_column(
        ForeignKey("projects.name", ondelete="RESTRICT"), index=True, default=DEFAULT_PROJECT
    )
    # A finished job outlives its dataset (DELETE /datasets/{id}); a queued or running one keeps it.
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    model_name: Mapped[str] = mapped_column(String(100), index=True)
    arch: Mapped[str] = mapped_column(String(200))
    weights: Mapped[str] = mapped_column(Text)
    strategy: Mapped[str] = mapped_column(String(20))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # the whole validated request
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued, index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Durability: failed attempts (crashed worker, transient error) count towards max_attempts; a retried job
    # waits in `queued` until retry_after; enqueued_at is when its task was last sent to the broker.
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retry_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_epoch: Mapped[int | None] = mapped_column(Integer)  # last epoch with a resumable checkpoint
    last_step: Mapped[int | None] = mapped_column(Integer)  # optimizer steps taken up to that checkpoint
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    val_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    baseline_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    flops_per_image: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    dataset: Mapped[Dataset | None] = relationship()
    epochs: Mapped[list[Epoch]] = relationship(order_by="Epoch.epoch", cascade="all, delete-orphan")
    checkpoints: Mapped[list[Checkpoint]] = relationship(order_by="Checkpoint.epoch", cascade="all, delete-orphan")


class Epoch(Base):
    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_epochs_job_id_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    train_accuracy: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    images_per_second: Mapped[float] = mapped_column(Float)
    tflops: Mapped[float | None] = mapped_column(Float)
    mfu: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_checkpoints_job_id_epoch"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    pruned: Mapped[bool] = mapped_column(Boolean, default=False)  # file removed: neither best nor latest
    # The full training state (optimizer, scheduler, RNG, ...) a re-claimed job resumes from; kept for the
    # latest two epochs, so a corrupted latest file falls back to the one before.
    state_path: Mapped[str | None] = mapped_column(Text)
    state_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RegisteredModel(Base):
    __tablename__ = "registered_models"

    project: Mapped[str] = mapped_column(ForeignKey("projects.name", ondelete="RESTRICT"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    pinned_version: Mapped[int | None] = mapped_column(Integer)
    # The serving backend the pin asks for (torch, onnx, int8); None: the server's VISIONTUNE_PREDICT_BACKEND.
    pinned_backend: Mapped[str | None] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    versions: Mapped[list[ModelVersion]] = relationship(order_by="ModelVersion.version", viewonly=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("project", "model_name", "version", name="uq_model_versions_project_model_name_version"),
        ForeignKeyConstraint(
            ["project", "model_name"],
            ["registered_models.project", "registered_models.name"],
            name="fk_model_versions_project_model_name_registered_models",
            ondelete="CASCADE",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    checkpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"))
    arch: Mapped[str] = mapped_column(String(200))
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    checkpoint: Mapped[Checkpoint] = relationship()


class ModelAlias(Base):
    """A named pointer (`production`, `staging`, ...) at one version of a model; `/predict` takes `name@alias`."""

    __tablename__ = "model_aliases"
    __table_args__ = (
        ForeignKeyConstraint(
            ["project", "model_name"],
            ["registered_models.project", "registered_models.name"],
            name="fk_model_aliases_project_model_name_registered_models",
            ondelete="CASCADE",
        ),
        # An alias never points at a missing version (the registry removes it, with a history entry, first).
        ForeignKeyConstraint(
            ["project", "model_name", "version"],
            ["model_versions.project", "model_versions.model_name", "model_versions.version"],
            name="fk_model_aliases_project_model_name_version_model_versions",
            ondelete="CASCADE",
        ),
    )

    project: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(100), primary_key=True)
    alias: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    backend: Mapped[str | None] = mapped_column(String(10))  # as pinned_backend, for this alias
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ServingChange(Base):
    """One change of what a model serves: its pin or one alias moved (from -> to; None: unset), by whom, when."""

    __tablename__ = "serving_changes"
    __table_args__ = (Index("ix_serving_changes_project_model_name", "project", "model_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(50))  # "pin" or "alias:<name>"
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(20))  # pin | unpin | alias | alias-delete | rollback
    key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor: Mapped[str] = mapped_column(String(120))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ExportStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    verified = "verified"  # passed verification: may be served
    rejected = "rejected"  # verification failed: never served
    failed = "failed"  # the export itself could not be made


class Export(Base):
    """A version's weights in another format (ONNX, int8), made on a worker and verified before serving."""

    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("job_id", "format", name="uq_exports_job_id_format"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    project: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    format: Mapped[str] = mapped_column(String(20))  # onnx | onnx-int8
    status: Mapped[str] = mapped_column(String(20), default=ExportStatus.queued)
    path: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # class names, preprocessing, image size: what a server needs to use the file on its own
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # verification on val (and test) splits
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Durability, as for jobs: a worker claims a queued export by bumping `attempt` (its fencing token) and holds
    # a lease it renews while it works; the reaper puts back a `running` export whose lease ran out (a lost
    # attempt counts in `failures`, up to max_attempts) and re-sends a queued one whose task the broker lost
    # (enqueued_at is when its task was last sent).
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ValPrediction(Base):
    """The best checkpoint's prediction for one validation image of a job: a row of its confusion matrix, image
    by image (the dashboard shows a cell's images). Written once, when the job succeeds; gone with the job, and
    with its dataset (the refs name that dataset's images)."""

    __tablename__ = "val_predictions"
    __table_args__ = (Index("ix_val_predictions_cell", "job_id", "true_class", "predicted_class", "confidence"),)

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    ref: Mapped[int] = mapped_column(Integer, primary_key=True)  # the image's stable number in the dataset
    true_class: Mapped[int] = mapped_column(Integer)
    predicted_class: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)  # the predicted class's probability
