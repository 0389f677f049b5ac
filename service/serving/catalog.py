"""Which trained model a name means: a job id, or the aliases `latest` and `best`.

Every succeeded job is servable under its id, and its version is that id. Aliases resolve at
each request, so a job that finishes is served as `latest` (and maybe `best`) at once.
The functions take a Session; `Catalog` is how the API uses them, a short session each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from service.db import Database
from service.ids import PATTERN, parse_id
from service.models import Artifact, Job, Study, StudyTrial
from service.schemas import JobState
from service.serving.store import ModelStore, ModelUnavailable

LATEST = "latest"  # the newest succeeded job: the highest id, as TF Serving's latest version
BEST = "best"  # the succeeded job with the highest test accuracy; the newer one on a tie
ALIASES = (LATEST, BEST)
# `study-{id}`: the best completed trial of study {id}, by the study's objective.
STUDY_PREFIX = "study-"
# What a name can be, for the API's schema.
NAME_PATTERN = f"^({PATTERN}|{LATEST}|{BEST}|{STUDY_PREFIX}{PATTERN})$"


class ModelNotFound(LookupError):
    """No model answers to this name (or this version of it)."""


class ModelNotReady(ModelUnavailable):
    """The job exists but has no trained model: queued, running, failed or cancelled."""

    def __init__(self, job_id: int, state: str, error: str | None) -> None:
        what = {
            "queued": "is queued",
            "running": "is still running",
            "failed": f"failed ({error})" if error else "failed",
            "cancelled": "was cancelled",
        }.get(state, f"is {state}")
        super().__init__(f"job {job_id} {what}: it has no trained model")
        self.job_id = job_id
        self.state = JobState(state)
        self.error = error


@dataclass(frozen=True)
class ModelRef:
    """A job as a model: the name it was asked by, and its job (its version)."""

    name: str
    job_id: int
    state: JobState
    error: str | None

    @property
    def version(self) -> str:
        return str(self.job_id)

    @property
    def ready(self) -> bool:
        # A pruned trial keeps its model at the epoch it reached: servable by its id.
        return self.state in (JobState.succeeded, JobState.pruned)


def find_model(*, session: Session, name: str, version: str | None = None) -> ModelRef:
    """The job `name` means, whatever its state; ModelNotFound when none (or not `version`)."""
    row = _lookup(session, name)
    if row is None:
        if name in ALIASES:
            raise ModelNotFound(f"no job has succeeded yet, so '{name}' names no model")
        if name.startswith(STUDY_PREFIX):
            raise ModelNotFound(f"'{name}' names no model: no such study, or none of its "
                                "trials has completed yet")
        raise ModelNotFound(f"model '{name}' not found: a name is a job id, latest or best")
    return _check_version(_ref(name, row), version)


def resolve(*, session: Session, name: str, version: str | None = None) -> ModelRef:
    """The servable model `name` means; ModelNotFound, or ModelNotReady when not trained."""
    ref = find_model(session=session, name=name, version=version)
    if not ref.ready:
        raise ModelNotReady(ref.job_id, ref.state, ref.error)
    return ref


def servable_names(*, session: Session, limit: int = 1_000) -> list[str]:
    """The ids of succeeded jobs, newest first, then the aliases when any job has succeeded."""
    ids: Sequence[int] = session.scalars(
        select(Job.id)
        .where(Job.state == JobState.succeeded)
        .order_by(Job.id.desc())
        .limit(limit)
    ).all()
    return [str(job_id) for job_id in ids] + (list(ALIASES) if ids else [])


def database_ready(*, session: Session) -> bool:
    """True when the database answers: the server can resolve names and serve."""
    return session.scalar(select(1)) == 1


# Built once: constructing a statement costs more than running it on SQLite. Core columns,
# not ORM attributes, skip the ORM's compile step for a three-column read.
_JOBS = Job.__table__.c
_COLUMNS = select(_JOBS.id, _JOBS.state, _JOBS.error)
_SUCCEEDED = _COLUMNS.where(_JOBS.state == JobState.succeeded.value)
_BY_ID = _COLUMNS.where(_JOBS.id == bindparam("job_id"))
_BY_ALIAS = {
    LATEST: _SUCCEEDED.order_by(_JOBS.id.desc()).limit(1),
    BEST: _SUCCEEDED.order_by(_JOBS.test_accuracy.desc().nulls_last(), _JOBS.id.desc()).limit(1),
}


def _best_of_study(session: Session, study_id: int) -> int | None:
    """The job of the study's best completed trial (the order service/studies/ keeps)."""
    spec = session.scalar(select(Study.spec).where(Study.id == study_id))
    if spec is None:
        return None
    maximize = spec.get("objective", {}).get("direction") == "maximize"
    value = StudyTrial.value.desc() if maximize else StudyTrial.value.asc()
    return session.scalar(
        select(StudyTrial.job_id)
        .where(StudyTrial.study_id == study_id, StudyTrial.state == "complete",
               StudyTrial.value.is_not(None), StudyTrial.job_id.is_not(None))
        .order_by(value, StudyTrial.number).limit(1)
    )


def _lookup(session: Session, name: str) -> Row[tuple[int, str, str | None]] | None:
    if name.startswith(STUDY_PREFIX):
        study_id = parse_id(name.removeprefix(STUDY_PREFIX))
        best = _best_of_study(session, study_id) if study_id is not None else None
        return session.execute(_BY_ID, {"job_id": best}).first() if best is not None else None
    if name in _BY_ALIAS:
        return session.execute(_BY_ALIAS[name]).first()
    job_id = parse_id(name)
    return session.execute(_BY_ID, {"job_id": job_id}).first() if job_id is not None else None


def _ref(name: str, row: Row[tuple[int, str, str | None]]) -> ModelRef:
    return ModelRef(name=name, job_id=row.id, state=JobState(row.state), error=row.error)


def _check_version(ref: ModelRef, version: str | None) -> ModelRef:
    # A version is a job id, spelled by the same rule: `01` or `١` is no version of job 1.
    if version is not None and parse_id(version) != ref.job_id:
        raise ModelNotFound(
            f"model '{ref.name}' has no version '{version}'; its version is {ref.version}"
        )
    return ref


class Catalog:
    """The models as the API serves them: each lookup in its own short read session, and the
    hash of each succeeded job's model remembered, so a prediction by job id costs no query
    (under load a query costs more than the inference). That is safe because succeeded is a
    final state and a model never changes. Aliases are looked up every time: they move
    whenever a job succeeds."""

    _MAX_REMEMBERED = 100_000

    def __init__(self, *, database: Database, store: ModelStore) -> None:
        self.database = database
        self.store = store
        # Succeeded job ids, and their model's sha256 once it was fetched.
        self._succeeded: dict[int, str | None] = {}

    def find(self, name: str, version: str | None = None) -> ModelRef:
        """The job `name` means, in whatever state (see `find_model`)."""
        with self.database.session() as session:
            ref = find_model(session=session, name=name, version=version)
        if ref.ready:
            self._remember(ref.job_id, self._succeeded.get(ref.job_id))
        return ref

    def resolve(self, name: str, version: str | None = None) -> ModelRef:
        """The servable model `name` means (see `resolve`)."""
        job_id = parse_id(name)
        if job_id is not None and job_id in self._succeeded:
            ref = ModelRef(name=name, job_id=job_id, state=JobState.succeeded, error=None)
            return _check_version(ref, version)
        ref = self.find(name, version)
        if not ref.ready:
            raise ModelNotReady(ref.job_id, ref.state, ref.error)
        return ref

    def predict(self, ref: ModelRef, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, 10) from the model's LiteRT interpreter."""
        return self.store.predict(self.cache(ref.job_id), images)

    def input_shape(self, ref: ModelRef) -> tuple[int, ...]:
        """One sample's shape as the model reads it, from its .tflite: (784,) or
        (28, 28, 1) for MNIST models."""
        return self.store.input_shape(self.cache(ref.job_id))

    def content(self, ref: ModelRef) -> bytes:
        """The model's .tflite bytes, checked against the hash the database holds."""
        return self.store.content(self.cache(ref.job_id))

    def cache(self, job_id: int) -> str:
        """The model's hash, with its bytes in the store: copied from the database (the
        worker that trained it may share nothing else with this API) and checked there."""
        sha256 = self._succeeded.get(job_id)
        if sha256 is not None and self.store.has(sha256):
            return sha256
        with self.database.session() as session:
            sha256 = session.scalar(select(Artifact.sha256).where(Artifact.job_id == job_id))
            if sha256 is None:
                raise ModelUnavailable(f"job {job_id} has no trained model")
            if not self.store.has(sha256):
                content = session.scalar(
                    select(Artifact.content).where(Artifact.job_id == job_id)
                )
                self.store.put(sha256, content)
        self._remember(job_id, sha256)
        return sha256

    def names(self) -> list[str]:
        """See `servable_names`."""
        with self.database.session() as session:
            return servable_names(session=session)

    def database_ready(self) -> bool:
        """See `database_ready`."""
        with self.database.session() as session:
            return database_ready(session=session)

    def _remember(self, job_id: int, sha256: str | None) -> None:
        if len(self._succeeded) >= self._MAX_REMEMBERED:
            self._succeeded.clear()  # crude but bounded; the next lookups refill it
        self._succeeded[job_id] = sha256
