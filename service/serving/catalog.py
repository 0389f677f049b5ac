"""Which trained model a name means: a job id, or the aliases `latest` and `best`.

Every succeeded job is servable under its id, and its version is that id. Aliases resolve at
each request, so a job that finishes is served as `latest` (and maybe `best`) at once.
An API key sees only its own jobs' models: another key's id is not found, and its `latest`
and `best` are among its own jobs (an admin's, among all).
The functions take a Session; `Catalog` is how the API uses them, a short session each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from service.db import Database
from service.ids import PATTERN, parse_id
from service.models import Artifact, Job, Study, StudyTrial
from service.schemas import JobState
from service.serving.signatures import Signature, Signatures
from service.serving.store import ModelStore, ModelUnavailable
from service.tenancy.identity import Identity

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
    owner: int | None = None  # the API key that made it (None: the admin)

    @property
    def version(self) -> str:
        return str(self.job_id)

    @property
    def ready(self) -> bool:
        # A pruned trial keeps its model at the epoch it reached: servable by its id.
        return self.state in (JobState.succeeded, JobState.pruned)


def find_model(
    *, session: Session, name: str, version: str | None = None,
    identity: Identity = Identity.ADMIN,
) -> ModelRef:
    """The job `name` means to `identity`, whatever its state; ModelNotFound when none (or
    not `version`, or another key's job)."""
    row = _lookup(session, name, identity)
    if row is None:
        if name in ALIASES:
            raise ModelNotFound(f"no job has succeeded yet, so '{name}' names no model")
        if name.startswith(STUDY_PREFIX):
            raise ModelNotFound(f"'{name}' names no model: no such study, or none of its "
                                "trials has completed yet")
        raise ModelNotFound(f"model '{name}' not found: a name is a job id, latest or best")
    return _check_version(_ref(name, row), version)


def resolve(
    *, session: Session, name: str, version: str | None = None,
    identity: Identity = Identity.ADMIN,
) -> ModelRef:
    """The servable model `name` means; ModelNotFound, or ModelNotReady when not trained."""
    ref = find_model(session=session, name=name, version=version, identity=identity)
    if not ref.ready:
        raise ModelNotReady(ref.job_id, ref.state, ref.error)
    return ref


def servable_names(
    *, session: Session, limit: int = 1_000, identity: Identity = Identity.ADMIN
) -> list[str]:
    """The ids of the succeeded jobs `identity` sees, newest first, then the aliases when any
    of them has succeeded."""
    query = select(Job.id).where(Job.state == JobState.succeeded)
    if identity.sees is not None:
        query = query.where(Job.owner == identity.sees)
    ids: Sequence[int] = session.scalars(query.order_by(Job.id.desc()).limit(limit)).all()
    return [str(job_id) for job_id in ids] + (list(ALIASES) if ids else [])


def database_ready(*, session: Session) -> bool:
    """True when the database answers: the server can resolve names and serve."""
    return session.scalar(select(1)) == 1


# Built once: constructing a statement costs more than running it on SQLite. Core columns,
# not ORM attributes, skip the ORM's compile step for a three-column read.
_JOBS = Job.__table__.c
_COLUMNS = select(_JOBS.id, _JOBS.state, _JOBS.error, _JOBS.owner)
_SUCCEEDED = _COLUMNS.where(_JOBS.state == JobState.succeeded.value)
_OWNED = _SUCCEEDED.where(_JOBS.owner == bindparam("owner"))
_BY_ID = _COLUMNS.where(_JOBS.id == bindparam("job_id"))
_NEWEST = (_JOBS.id.desc(),)
_MOST_ACCURATE = (_JOBS.test_accuracy.desc().nulls_last(), _JOBS.id.desc())
_BY_ALIAS = {
    LATEST: _SUCCEEDED.order_by(*_NEWEST).limit(1),
    BEST: _SUCCEEDED.order_by(*_MOST_ACCURATE).limit(1),
}
# A key's own aliases: its newest and its most accurate job.
_BY_OWNED_ALIAS = {
    LATEST: _OWNED.order_by(*_NEWEST).limit(1),
    BEST: _OWNED.order_by(*_MOST_ACCURATE).limit(1),
}

_Row = Row[tuple[int, str, str | None, int | None]]


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


def _lookup(session: Session, name: str, identity: Identity) -> _Row | None:
    if name.startswith(STUDY_PREFIX):
        study_id = parse_id(name.removeprefix(STUDY_PREFIX))
        best = _best_of_study(session, study_id) if study_id is not None else None
        if best is None:
            return None
        row = session.execute(_BY_ID, {"job_id": best}).first()
        return row if row is not None and identity.can_see(row.owner) else None
    if name in _BY_ALIAS:
        if identity.sees is None:
            return session.execute(_BY_ALIAS[name]).first()
        return session.execute(_BY_OWNED_ALIAS[name], {"owner": identity.sees}).first()
    job_id = parse_id(name)
    if job_id is None:
        return None
    row = session.execute(_BY_ID, {"job_id": job_id}).first()
    return row if row is not None and identity.can_see(row.owner) else None


def _ref(name: str, row: _Row) -> ModelRef:
    return ModelRef(name=name, job_id=row.id, state=JobState(row.state), error=row.error,
                    owner=row.owner)


def _check_version(ref: ModelRef, version: str | None) -> ModelRef:
    # A version is a job id, spelled by the same rule: `01` or `١` is no version of job 1.
    if version is not None and parse_id(version) != ref.job_id:
        raise ModelNotFound(
            f"model '{ref.name}' has no version '{version}'; its version is {ref.version}"
        )
    return ref


@dataclass(frozen=True)
class _Known:
    """A succeeded job this process has served: its owner, its model's hash once fetched,
    and when its row was last seen."""

    owner: int | None
    sha256: str | None
    seen: float  # time.monotonic()


class Catalog:
    """The models as the API serves them: each lookup in its own short read session, and
    each succeeded job's owner and model hash remembered, so a prediction by job id costs no
    query (under load a query costs more than the inference). Succeeded is a final state and
    a model never changes; only deletion ends a job, so a remembered job is looked up again
    once RECHECK_AFTER seconds have passed: a job deleted through another API process is
    404 here within that time, and at once when deleted through this one (`forget`).

    An alias (`latest`, `best`) moves when a job succeeds or is deleted, which a worker or
    another API process may do: its answer is kept ALIAS_TTL seconds, so that under load an
    alias costs one query a second, not one a request (`best` sorts every succeeded job).
    A job deleted through this process drops the aliases at once (`forget`)."""

    _MAX_REMEMBERED = 100_000
    RECHECK_AFTER = 5.0
    ALIAS_TTL = 1.0

    def __init__(self, *, database: Database, store: ModelStore) -> None:
        self.database = database
        self.store = store
        self.signatures = Signatures(database)
        self._known: dict[int, _Known] = {}
        self._lock = threading.Lock()
        # (alias, the owner whose jobs it ranges over) -> its model and when it was read.
        self._aliases: dict[tuple[str, int | None], tuple[ModelRef, float]] = {}

    def find(
        self, name: str, version: str | None = None, *, identity: Identity = Identity.ADMIN
    ) -> ModelRef:
        """The job `name` means to `identity`, in whatever state (see `find_model`)."""
        with self.database.session() as session:
            ref = find_model(session=session, name=name, version=version, identity=identity)
        if ref.ready:
            known = self._known.get(ref.job_id)
            self._remember(ref.job_id, ref.owner, known.sha256 if known else None)
        return ref

    def resolve(
        self, name: str, version: str | None = None, *, identity: Identity = Identity.ADMIN
    ) -> ModelRef:
        """The servable model `name` means to `identity` (see `resolve`)."""
        if name in ALIASES:
            return _check_version(self._alias(name, identity), version)
        job_id = parse_id(name)
        known = self._known.get(job_id) if job_id is not None else None
        if known is not None and time.monotonic() - known.seen < self.RECHECK_AFTER:
            if not identity.can_see(known.owner):
                raise ModelNotFound(f"model '{name}' not found: a name is a job id, latest "
                                    "or best")
            ref = ModelRef(name=name, job_id=job_id, state=JobState.succeeded, error=None,
                           owner=known.owner)
            return _check_version(ref, version)
        ref = self.find(name, version, identity=identity)
        if not ref.ready:
            raise ModelNotReady(ref.job_id, ref.state, ref.error)
        return ref

    def _alias(self, name: str, identity: Identity) -> ModelRef:
        key = (name, identity.sees)
        cached = self._aliases.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.ALIAS_TTL:
            return cached[0]
        ref = self.find(name, identity=identity)  # an alias names succeeded jobs only
        self._aliases[key] = (ref, now)
        return ref

    def in_memory(self, name: str, *, identity: Identity = Identity.ADMIN) -> bool:
        """True when resolving `name` and predicting with its model need neither the
        database nor a file: the name was resolved lately (within RECHECK_AFTER or
        ALIAS_TTL), and its model's signature and interpreter are loaded."""
        now = time.monotonic()
        if name in ALIASES:
            cached = self._aliases.get((name, identity.sees))
            if cached is None or now - cached[1] >= self.ALIAS_TTL:
                return False
            job_id: int | None = cached[0].job_id
        else:
            job_id = parse_id(name)
        known = self._known.get(job_id) if job_id is not None else None
        return (
            known is not None and now - known.seen < self.RECHECK_AFTER
            and known.sha256 is not None and self.store.loaded(known.sha256)
            and self.signatures.known(job_id)
        )

    def predict(self, ref: ModelRef, images: np.ndarray, *, wait: bool = True) -> np.ndarray:
        """Probabilities (N, 10) from the model's LiteRT interpreter; with `wait` false,
        ModelBusy rather than loading the model or waiting for its interpreter."""
        return self.store.predict(self.cache(ref.job_id), images, wait=wait)

    def signature(self, ref: ModelRef) -> Signature:
        """What the model reads and the labels it answers in: MNIST's digits, or its job's
        uploaded dataset's (service/serving/signatures.py)."""
        return self.signatures.of(ref.job_id)

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
        known = self._known.get(job_id)
        if known is not None and known.sha256 is not None and self.store.has(known.sha256):
            return known.sha256
        with self.database.session() as session:
            row = session.execute(
                select(Artifact.sha256, Job.owner).join(Job, Job.id == Artifact.job_id)
                .where(Artifact.job_id == job_id)
            ).first()
            if row is None:
                raise ModelUnavailable(f"job {job_id} has no trained model")
            sha256 = row.sha256
            if not self.store.has(sha256):
                content = session.scalar(
                    select(Artifact.content).where(Artifact.job_id == job_id)
                )
                self.store.put(sha256, content)
        self._remember(job_id, row.owner, sha256)
        return sha256

    def forget(self, job_id: int, sha256: str | None) -> None:
        """A job was deleted: it is no model from now on, and its file leaves the cache
        unless another job's model has the same bytes."""
        with self._lock:
            self._known.pop(job_id, None)
            self._aliases.clear()  # the job may have been latest or best
        if sha256 is None:
            return
        with self.database.session() as session:
            shared = session.scalar(select(Artifact.job_id).where(Artifact.sha256 == sha256)
                                    .limit(1))
        if shared is None:
            self.store.discard(sha256)

    def prune(self) -> list[str]:
        """Drop cached model files that no job's model has any more (jobs deleted through
        another API process, or by retention); returns their hashes."""
        cached = self.store.cached()
        if not cached:
            return []
        live: set[str] = set()
        with self.database.session() as session:
            for start in range(0, len(cached), 500):
                live.update(session.scalars(
                    select(Artifact.sha256).where(Artifact.sha256.in_(cached[start:start + 500]))
                ).all())
        gone = [sha256 for sha256 in cached if sha256 not in live]
        for sha256 in gone:
            self.store.discard(sha256)
        return gone

    def after_sweep(self, deleted: Sequence[tuple[int, str | None]]) -> None:
        """After each pass of the API's sweeper: forget the jobs it deleted (retention), and
        drop the files of models deleted elsewhere."""
        for job_id, sha256 in deleted:
            self.forget(job_id, sha256)
        self.prune()

    def names(self, *, identity: Identity = Identity.ADMIN) -> list[str]:
        """See `servable_names`."""
        with self.database.session() as session:
            return servable_names(session=session, identity=identity)

    def database_ready(self) -> bool:
        """See `database_ready`."""
        with self.database.session() as session:
            return database_ready(session=session)

    def _remember(self, job_id: int, owner: int | None, sha256: str | None) -> None:
        with self._lock:
            if len(self._known) >= self._MAX_REMEMBERED:
                self._known.clear()  # crude but bounded; the next lookups refill it
            self._known[job_id] = _Known(owner, sha256, time.monotonic())
