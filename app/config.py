"""Settings shared by the API, the worker and the embedded launcher (env prefix VISIONTUNE_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
    predict_device: str = Field(default="cpu", description="Device the API process serves /predict on")
    torch_threads: int | None = Field(default=None, description="Intra-op threads for training/serving")
    host: str = "127.0.0.1"
    port: int = 8000

    def resolved_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file under data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'visiontune.db').resolve()}"

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
