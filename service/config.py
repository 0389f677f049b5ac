"""Settings, read once from the environment (prefix TAPEFIT_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. The README's settings table lists them."""

    # env_ignore_empty: `TAPEFIT_API_TOKEN=` (as compose passes an unset variable) means unset.
    model_config = SettingsConfigDict(env_prefix="TAPEFIT_", extra="ignore", env_ignore_empty=True)

    data_dir: Path = Field(
        default=Path("tapefit-data"), description="The SQLite file and the trained models."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: a SQLite file in the data dir."
    )
    mnist_path: Path | None = Field(
        default=None,
        description="An .npz or a folder of IDX files; unset: keras downloads MNIST.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="When set, every route but the health probes needs 'Bearer <token>'.",
    )
    metrics_public: bool = Field(
        default=False,
        description="GET /metrics answers without a token (for a Prometheus that has none).",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as text, or one JSON object per line (with job_id on a "
        "worker's lines about a job).",
    )
    max_request_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, le=1024**3,
        description="The largest request body; larger ones get 413.",
    )
    sqlite_busy_timeout: float = Field(
        default=10.0, gt=0, le=600,
        description="Seconds a SQLite writer waits for the lock; then the API answers 503.",
    )
    poll_interval: float = Field(
        default=0.1, gt=0, le=10, description="Seconds an idle worker waits between claims."
    )
    flush_interval: float = Field(
        default=1.0, gt=0, le=60, description="Longest a worker holds metric rows before writing."
    )
    flush_rows: int = Field(
        default=100, ge=1, le=10_000, description="Most metric rows a worker holds before writing."
    )
    heartbeat_interval: float = Field(
        default=5.0, gt=0, le=300, description="Seconds between a running worker's heartbeats."
    )
    lease_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="A job whose heartbeat is older is requeued."
    )
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="Lost workers a job survives before it fails."
    )
    model_cache_size: int = Field(
        default=8, ge=1, le=1_000, description="Trained models the API keeps loaded."
    )
    study_interval: float = Field(
        default=1.0, gt=0, le=300,
        description="Seconds between the API's passes over the running studies (asking for "
        "their next trials); workers also drive a study as each trial of it ends.",
    )
    max_streams: int = Field(
        default=500, ge=1, le=100_000,
        description="Event streams (GET /jobs/{id}/events) open at once; past it 503.",
    )
    header_timeout: float = Field(
        default=10.0, gt=0, le=300,
        description="Seconds a client has to send a request's line and headers (from "
        "connecting, or from the next request's first byte), and the longest its body may "
        "stall; then the connection is closed.",
    )
    max_connections: int = Field(
        default=1000, ge=10, le=100_000,
        description="Open connections (or requests in flight) past which new requests get 503.",
    )
    max_decoded_image_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024 * 1024, le=1024**3,
        description="The largest decoded upload (width x height x channels x bytes per "
        "channel); larger images get 413 before decoding.",
    )
    max_concurrent_decodes: int = Field(
        default=2, ge=1, le=64,
        description="Image uploads decoded at once; past it one waits 2 s, then gets 503.",
    )
    max_job_rows: int = Field(
        default=1_000_000, ge=1, le=1_000_000_000,
        description="The most loss rows one job may write (epochs x batches per epoch); a "
        "submission past it gets 422.",
    )
    retention_days: float | None = Field(
        default=None, gt=0, le=36_500,
        description="When set, the API deletes finished jobs (and all they own) this many "
        "days after they finished; unset: jobs are kept until deleted.",
    )
    max_dataset_bytes: int = Field(
        default=200 * 1000 * 1000, ge=1024, le=64 * 1024**3,
        description="The largest dataset upload (POST /datasets); larger ones get 413.",
    )
    max_dataset_unpacked_bytes: int = Field(
        default=1024**3, ge=1024 * 1024, le=256 * 1024**3,
        description="The most a dataset may unpack to: a zip's or npz's members as declared, "
        "and the decoded arrays; past it 413 before anything is extracted.",
    )
    max_dataset_entries: int = Field(
        default=100_000, ge=1, le=10_000_000,
        description="The most entries a dataset's zip (or npz) may hold; past it 413, "
        "counted before anything is extracted.",
    )


    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.heartbeat_interval * 2 > self.lease_timeout:
            # One late heartbeat must not cost a healthy worker its job.
            raise ValueError("lease_timeout must be at least twice heartbeat_interval")
        if self.api_token is not None and len(self.api_token.get_secret_value()) < 16:
            raise ValueError("api_token must be at least 16 characters")
        # Workers started from another directory must find the same files.
        self.data_dir = self.data_dir.expanduser().resolve()
        return self

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tapefit.db'}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        """A worker's cache of uploaded datasets, by sha256 (the database holds them)."""
        return self.data_dir / "datasets"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings` instead."""
    return Settings()
