"""Settings shared by the API, the worker and the embedded launcher (env prefix VISIONTUNE_)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; read from VISIONTUNE_* environment variables or a .env file."""

    model_config = SettingsConfigDict(env_prefix="VISIONTUNE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("./var"), description="Datasets, checkpoints and the SQLite file")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite under data_dir if unset")
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker (Redis)")
    queue: str = Field(default="training", description="Celery queue the training tasks go to")
    dataset_root: Path | None = Field(
        default=None, description="Directory under which operators may register datasets already on disk"
    )
    max_upload_bytes: int = Field(default=4 * 1024**3, description="Largest dataset upload accepted")
    max_extracted_bytes: int = Field(default=16 * 1024**3, description="Largest unpacked dataset accepted")
    max_predict_images: int = Field(default=64, description="Most images in one /predict request")
    max_predict_image_bytes: int = Field(default=20 * 1024**2, description="Largest image /predict accepts")
    max_predict_request_bytes: int = Field(
        default=64 * 1024**2, description="Largest /predict request body (all images and fields together)"
    )
    lease_seconds: float = Field(default=60.0, description="How long a worker's claim on a job lasts unrenewed")
    max_attempts: int = Field(
        default=3, description="Default attempts a job gets before a crashing worker or transient error fails it"
    )
    retry_backoff_seconds: float = Field(
        default=5.0, description="Wait before retry n is retry_backoff_seconds * 2**(n-1) (capped at 10 min)"
    )
    reaper_interval_seconds: float = Field(default=5.0, description="How often the reaper looks for stuck jobs")
    requeue_grace_seconds: float = Field(
        default=30.0, description="A queued job whose task the broker no longer holds is re-sent after this long"
    )
    predict_device: str = Field(
        default="auto", description="Device the API process serves /predict on: auto (a GPU if it has one), cpu, cuda"
    )
    predict_backend: Literal["auto", "torch", "onnx", "int8"] = Field(
        default="auto",
        description="auto: the verified export that ran fastest in its verification (CPU), torch on a GPU; "
        "onnx/int8: that export when it is verified, else torch",
    )
    predict_max_batch: int = Field(
        default=32, ge=1, description="Most images one /predict forward takes (concurrent requests are coalesced)"
    )
    predict_max_wait_ms: float = Field(
        default=2.0, ge=0, description="Longest a waiting batch is held for more requests (never a lone request)"
    )
    predict_queue_limit: int = Field(
        default=256, ge=1, description="Most images waiting for inference per API process; past it /predict is 503"
    )
    predict_latency_budget_ms: float = Field(
        default=2000.0, gt=0, description="A /predict request that would wait longer than this is refused (503)"
    )
    predict_isolation: Literal["process", "thread"] = Field(
        default="process",
        description="Where /predict's forward runs: a model-host process per API process (never competing with "
        "request threads for the GIL), or a thread of the API process",
    )
    predict_precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto",
        description="The torch backend's precision: auto is fp16 autocast on a GPU and fp32 on a CPU; bf16 can pay "
        "on CPUs with AMX",
    )
    predict_compile: bool = Field(
        default=False,
        description="Run the torch backend through torch.compile (compiled while the model warms up, before it "
        "takes traffic; eager if compilation fails)",
    )
    predict_lookup_ttl_ms: float = Field(
        default=1000.0,
        ge=0,
        description="How long an API process keeps what a model name serves before reading it again (a change made "
        "through that process is seen at once; others, such as a better job, within this)",
    )
    predict_threads: int | None = Field(
        default=None, ge=1, description="Intra-op threads of the inference thread (torch_threads, else the cores)"
    )
    max_predict_pixels: int = Field(
        default=40_000_000, description="Most pixels one /predict image may have (checked from its header)"
    )
    max_predict_request_pixels: int = Field(
        default=200_000_000, description="Most pixels of all images of one /predict request together"
    )
    # ---- access control (app/auth.py, app/api/deps.py)
    auth: Literal["on", "off"] = Field(
        default="on", description="API keys required; 'off' is accepted only when the API binds to loopback"
    )
    secret_key: str | None = Field(
        default=None,
        description="Server secret keys are hashed with (HMAC-SHA256); read from data_dir/secret_key if unset",
    )
    admin_key: str | None = Field(
        default=None, description="First admin key (project default), created at start-up when no key has it"
    )
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS (off when empty)")
    weights_root: Path | None = Field(
        default=None, description="Directory under which admins may name server-side weights files"
    )
    # ---- limits (checked before the work; app/limits.py, app/services/archives.py)
    max_json_bytes: int = Field(default=1024**2, description="Largest JSON request body")
    max_archive_entries: int = Field(default=200_000, description="Most entries a dataset archive may hold")
    max_compression_ratio: float = Field(
        default=200.0, description="Most bytes an archive may unpack to per byte uploaded"
    )
    max_image_pixels: int = Field(
        default=89_478_485, description="Most pixels of one dataset image (Pillow's own default limit)"
    )
    # ---- quotas and rate limits, per project / per key (app/services/quotas.py)
    max_active_jobs: int = Field(default=4, description="Queued + running jobs a project may have at once")
    max_job_epochs: int = Field(default=300, description="Most epochs one job may ask for")
    max_job_tera_flops: float = Field(
        default=5_000_000.0,
        description="Training budget of one job: epochs × training images × forward TFLOPs per image × 3",
    )
    max_batch_pixels: int = Field(
        default=4096 * 224 * 224, description="Most pixels in one training batch (batch_size × image_size²)"
    )
    storage_quota_bytes: int = Field(
        default=200 * 1024**3, description="Datasets + checkpoints a project may keep on disk"
    )
    rate_limit_predict: str = Field(default="1200/minute", description="/predict requests per key (limits syntax)")
    rate_limit_write: str = Field(default="120/minute", description="State-changing requests per key")
    rate_limit_storage_url: str | None = Field(
        default=None, description="Where rate-limit counters live (limits URL); the broker's Redis if unset"
    )
    # ---- live job events (app/events.py, GET /jobs/{id}/events)
    events_url: str | None = Field(
        default=None, description="Redis holding the jobs' event streams; the broker's Redis if unset"
    )
    events_max_len: int = Field(default=10_000, ge=100, description="Most events kept per job (approximate)")
    events_ttl_seconds: float = Field(
        default=7 * 86400, gt=0, description="How long a job's events are kept after its last one"
    )
    events_progress_interval_seconds: float = Field(
        default=1.0, ge=0, description="Least time between two progress events of one job"
    )
    # ---- Prometheus metrics (app/monitoring/, GET /metrics)
    metrics_dir: Path | None = Field(
        default=None,
        description="Where the processes of this host write their metrics (prometheus_client's multiprocess "
        "mode; a folder visiontune-multiproc of its own in it, one subdirectory per launcher, wiped at its start). "
        "Unset: a folder of this user under the system's temporary directory, one per data_dir. Keep it on a local "
        "filesystem (never NFS), shared by the processes of one host only",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="`visiontune worker` also serves its processes' metrics on this port (no key: for a "
        "Prometheus on another host; keep the port private)",
    )
    worker_metrics_host: str = Field(default="127.0.0.1", description="Address worker_metrics_port binds to")
    torch_threads: int | None = Field(default=None, description="Intra-op threads for training/serving")
    host: str = "127.0.0.1"
    port: int = 8000

    def resolved_predict_device(self) -> str:
        """predict_device with auto resolved: cuda when this process sees a GPU, else cpu."""
        if self.predict_device != "auto":
            return self.predict_device
        import torch  # only when serving asks: the launcher and the reaper never import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def broker_redis_url(self) -> str | None:
        """The broker's URL when the broker is Redis (rate limits and live events live there unless told
        otherwise; the reaper can ask it which tasks it holds), else None."""
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://", "redis+unix://")) else None

    def resolved_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file under data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'visiontune.db').resolve()}"

    def resolved_metrics_dir(self) -> Path:
        """metrics_dir, or a host-local default: <tmp>/visiontune-<uid>/metrics-<digest of data_dir's absolute
        path>, so the launchers of one installation on this host (same user, same data_dir) meet there, and the
        data_dir itself, which may be a shared filesystem, holds no metrics."""
        if self.metrics_dir is not None:
            return self.metrics_dir
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"visiontune-{os.getuid()}" / f"metrics-{digest}"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
