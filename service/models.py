"""The database tables, as SQLAlchemy 2 typed ORM classes. Alembic migrations make them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Named constraints, so Alembic's batch mode can alter them on SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    """A per-user API key (service/tenancy/keys.py). The token is shown once, at creation:
    only the SHA-256 of its secret part is kept. A revoked key keeps its row, so the jobs it
    made keep their owner."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    # The token's public part, which finds the row: tfk_<prefix>_<secret>.
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    max_queued: Mapped[int | None] = mapped_column(Integer)  # None: no limit
    max_running: Mapped[int | None] = mapped_column(Integer)  # None: no limit
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    """A training job and its live state. Its `state` column is the job state machine
    (see service/queue/jobs.py for the transitions)."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Live progress, written by the worker with each flush of metric rows.
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    # Training throughput over the last group of rows, for the ETA.
    steps_per_second: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    # Who runs it: set by the claim, refreshed by every write the worker makes.
    worker_id: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Claims that did not end in a graceful hand-back: a job fails after max_attempts.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The fencing token: raised by every claim; a worker's writes name the one it got.
    lease_epoch: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # A client's Idempotency-Key: a retried submission returns the job it made first.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    # The API key that submitted it; None: the admin token, or made before keys existed.
    # Everything a key makes carries this column: a key sees only its own rows.
    owner: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    # Higher first, among its owner's queued jobs (the claim is fair between owners first).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A study's trial: the study and its trial number (service/studies/).
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    trial: Mapped[int | None] = mapped_column(Integer)
    # The epoch (from 1) after which early stopping ended the job.
    stopped_early_at_epoch: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        # The claim looks for the oldest queued job; the list filters by state.
        Index("ix_jobs_state_id", "state", "id"),
        # The claim and the quotas count each owner's queued and running jobs.
        Index("ix_jobs_state_owner", "state", "owner"),
        # Retention looks for jobs that finished long ago.
        Index("ix_jobs_finished_at", "finished_at"),
    )


class Metric(Base):
    """One training batch: the loss curve, one row per global step."""

    __tablename__ = "metrics"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    time: Mapped[float] = mapped_column(Float)


class EpochSummary(Base):
    """One finished epoch: its mean training figures and the test set's."""

    __tablename__ = "epochs"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_accuracy: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    # On the held-out part of the training set (validation_split); None without one.
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)


class Artifact(Base):
    """A succeeded job's exported .tflite, kept in the database so that an API which shares
    nothing but the database with the worker (another machine) can serve it."""

    __tablename__ = "artifacts"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    content: Mapped[bytes] = mapped_column(LargeBinary)
    # Indexed: deleting a job asks whether another job's model has the same bytes (the
    # API's cache is named by hash), without reading every model.
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkpoint(Base):
    """A running job's newest training state (weights, optimizer slots, fit position) as one
    archive, in the database so a job requeued onto any machine resumes where it stopped.
    One per job, replaced at each epoch's end, dropped when the job ends."""

    __tablename__ = "checkpoints"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer)  # batches done: a resumed job starts here
    lease_epoch: Mapped[int] = mapped_column(Integer)  # the lease that wrote it
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EventCounter(Base):
    """A running total of one kind of rare event (lease expiries, hand-backs), raised in
    the same transaction as the change it counts: exact whichever process made it, and read
    by any API for GET /metrics (service/queue/counters.py)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class WorkerHeartbeat(Base):
    """One worker process that is, or was lately, alive: idle or training, each worker
    refreshes its row every heartbeat interval, so the API can tell whether any worker
    (on this machine or another sharing the database) is there to run a queued job."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the jobs' worker_id
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # heartbeat_at plus the worker's own lease timeout: past it, the worker counts as gone.
    # Stored so that a reader needs no settings to judge it (and each worker's promise holds).
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Dataset(Base):
    """An uploaded dataset, parsed, checked and split at upload (service/datasets/): what it
    holds, and how its inputs are prepared. Its bytes (the canonical .npz every worker reads)
    are in `dataset_chunks`, so workers on other machines need no shared disk."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    format: Mapped[str] = mapped_column(String(16))  # what was uploaded: npz, csv, images
    kind: Mapped[str] = mapped_column(String(16))  # image or tabular
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    classes: Mapped[list[str]] = mapped_column(JSON)
    train_count: Mapped[int] = mapped_column(Integer)
    test_count: Mapped[int] = mapped_column(Integer)
    # The stored .npz's size and hash: a worker's cached copy is checked against it.
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # How inputs are prepared (training split's mean and std, or pixel scaling): see
    # service/datasets/prepare.py.
    preprocessing: Mapped[dict[str, Any]] = mapped_column(JSON)
    # A few training images for the dashboard (a small .npz), image datasets only; read
    # only by the samples route.
    samples: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    source_name: Mapped[str] = mapped_column(String(255))  # the uploaded file's name
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatasetChunk(Base):
    """One piece of a dataset's stored .npz, in order: bounded pieces, so neither writing nor
    reading a dataset holds it whole in one statement (service/datasets/storage.py)."""

    __tablename__ = "dataset_chunks"

    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class Study(Base):
    """A hyperparameter search (service/studies/): its spec, and its state machine
    (running -> succeeded | cancelled). Its trials are jobs; Optuna's view of them is in
    `study_trials`, so the database holds everything a driver needs after any restart."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), default="running")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Raised by every driver pass that changes the study: a pass commits only if the
    # revision it read is still current, so one driver acts on a study at a time.
    revision: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_studies_state_id", "state", "id"),)


class StudyTrial(Base):
    """One trial of a study as Optuna sees it: its params, its state and value once told,
    and the attributes its sampler and pruner keep (grid point, ASHA rungs)."""

    __tablename__ = "study_trials"

    study_id: Mapped[int] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    state: Mapped[str] = mapped_column(String(16), default="running")  # Optuna's trial state
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    system_attrs: Mapped[dict[str, Any]] = mapped_column(JSON)
    value: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobDataset(Base):
    """The uploaded dataset a job trains on, as it was when the job was submitted: its model
    answers in these labels and reads this shape even after the dataset is deleted. A job on
    the built-in MNIST has none."""

    __tablename__ = "job_datasets"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    dataset_id: Mapped[int] = mapped_column(Integer)  # no foreign key: it may be deleted
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))  # image or tabular
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    classes: Mapped[list[str]] = mapped_column(JSON)
