"""The job queue as the API sees it: submit, find, list, cancel, and the job's public view.

States and their transitions (each happens in one short write transaction):

    queued    -> running    leases.claim_job: a worker takes the oldest queued job
    queued    -> cancelled  cancel_job: nobody has started it, so it ends at once
    running   -> succeeded  leases.finish_job: trained, evaluated and exported
    running   -> failed     leases.fail_job: an exception in the worker, with its message
    running   -> cancelled  leases.mark_cancelled: the worker saw cancel_requested at a batch
                            boundary
    running   -> pruned     leases.mark_pruned: a study's pruner stopped the trial after an
                            epoch (its rows and its model at that epoch are kept)
    running   -> queued     leases.release_job: the worker is shutting down after a checkpoint
    running   -> queued     leases.requeue_stalled: no heartbeat for lease_timeout (worker lost)
    running   -> failed     leases.requeue_stalled: ... and the job has used up max_attempts
    succeeded, failed, cancelled, pruned: final, nothing leaves them but deletion
                            (delete_job), which takes the job and everything it owns.

A job belongs to the API key that submitted it (`owner`; None: the admin token). The routes
check who may see a job (service/api/deps.py); the functions here take an Identity where
they list or count.

Everything a worker does to a job goes through `service.queue.leases`, fenced by its lease.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from service.db import Database
from service.models import ApiKey, Artifact, Job, Metric, utcnow
from service.queue import leases, workers
from service.schemas import FINAL_STATES, JobRead, JobSpec, JobState, Progress, finite_or_none
from service.tenancy.identity import Identity, only_visible

# MNIST's training set: a job without a train_limit goes through all of it each epoch.
MNIST_TRAIN_SIZE = 60_000
# Loss rows deleted per transaction: a big job's deletion never holds SQLite's write lock
# for long (about 0.1 s each), so workers' writes go on meanwhile.
DELETE_CHUNK_ROWS = 50_000


class JobNotFound(LookupError):
    def __init__(self, job_id: int | str) -> None:
        super().__init__(f"job {job_id} not found")


class JobConflict(RuntimeError):
    """The job is in a state that does not allow what was asked."""


class JobTooLarge(ValueError):
    """The job would write more loss rows than TAPEFIT_MAX_JOB_ROWS allows (422)."""


def loss_rows(spec: JobSpec) -> int:
    """The loss rows a job writes: one per batch, epochs x batches per epoch."""
    examples = spec.dataset.train_limit or MNIST_TRAIN_SIZE
    return spec.epochs * math.ceil(examples / spec.batch_size)


def check_size(spec: JobSpec, max_rows: int) -> None:
    """JobTooLarge when the job would write more than `max_rows` loss rows."""
    rows = loss_rows(spec)
    if rows > max_rows:
        batches = rows // spec.epochs
        raise JobTooLarge(
            f"this job would write {rows:,} loss rows ({spec.epochs} epochs x {batches:,} "
            f"batches), more than TAPEFIT_MAX_JOB_ROWS ({max_rows:,}) allows: use fewer "
            "epochs, a larger batch_size or a train_limit"
        )


def submit_job(
    *,
    session: Session,
    spec: JobSpec,
    idempotency_key: str | None = None,
    owner: int | None = None,
) -> Job:
    """Queue a job for `owner` (an API key's id; None: the admin); it is committed when the
    caller's transaction commits.

    With an idempotency key, a retry of an earlier submission returns that job instead.
    """
    if idempotency_key is not None:
        earlier = find_submission(session=session, idempotency_key=idempotency_key, spec=spec,
                                  owner=owner)
        if earlier is not None:
            return earlier
    job = Job(
        state=JobState.queued,
        spec=spec.model_dump(mode="json"),
        created_at=utcnow(),
        idempotency_key=_stored_key(idempotency_key, owner),
        owner=owner,
        priority=spec.priority,
    )
    try:
        # A savepoint, so that a concurrent twin that inserted the same key first does not
        # spoil the transaction (PostgreSQL; SQLite serialises its writers already).
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        earlier = find_submission(session=session, idempotency_key=idempotency_key, spec=spec,
                                  owner=owner)
        if earlier is None:
            raise
        return earlier
    return job


def _stored_key(idempotency_key: str | None, owner: int | None) -> str | None:
    """An Idempotency-Key as stored: each API key's keys apart from every other's, so two
    users who both send `1` get their own jobs. The admin's are stored as sent (as before
    keys existed); a key's as its id and the key's SHA-256, which fits the column."""
    if idempotency_key is None or owner is None:
        return idempotency_key
    return f"{owner}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"


def find_submission(
    *, session: Session, idempotency_key: str, spec: JobSpec, owner: int | None = None
) -> Job | None:
    """The job an earlier submission with this key made, if any.

    The same key with another spec is a JobConflict: that client is not retrying.
    """
    stored = _stored_key(idempotency_key, owner)
    earlier = session.scalar(select(Job).where(Job.idempotency_key == stored))
    # Compared as specs, not as stored JSON: a job stored before a field existed has the
    # field's default, which is what its spec means.
    if earlier is not None and JobSpec.model_validate(earlier.spec) != spec:
        raise JobConflict("this Idempotency-Key was used for a different job spec")
    return earlier


def get_job(*, session: Session, job_id: int) -> Job:
    """The job, or JobNotFound."""
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def check_visible(*, session: Session, job_id: int, identity: Identity) -> None:
    """JobNotFound unless the job exists and `identity` may see it: another key's job is
    not found, never forbidden, so its id tells nothing."""
    if identity.sees is None:
        return
    found = session.execute(select(Job.owner).where(Job.id == job_id)).first()
    if found is None or not identity.can_see(found.owner):
        raise JobNotFound(job_id)


def list_jobs(
    *,
    session: Session,
    state: JobState | None,
    limit: int,
    offset: int,
    identity: Identity = Identity.ADMIN,
) -> tuple[Sequence[Job], int]:
    """A page of the jobs `identity` may see, newest first, and how many match in all."""
    query = only_visible(select(Job), Job.owner, identity)
    if state is not None:
        query = query.where(Job.state == state)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    jobs = session.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return jobs, total


def cancel_job(*, session: Session, job_id: int) -> Job:
    """Cancel a queued job at once, or ask the worker to stop a running one.

    Each transition is guarded by the state in its own UPDATE: on PostgreSQL a worker may
    claim the job between our read and our write, and then the job is running, so the
    cancel becomes a request its worker sees at its next write.
    """
    job = get_job(session=session, job_id=job_id)
    guarded = update(Job).where(Job.id == job_id).execution_options(synchronize_session=False)
    cancelled = session.execute(
        guarded.where(Job.state == JobState.queued)
        .values(state=JobState.cancelled, finished_at=utcnow())
    ).rowcount
    if cancelled:
        leases.drop_checkpoint(session, job_id)  # a handed-back job may have one
    asked = cancelled or session.execute(
        guarded.where(Job.state == JobState.running).values(cancel_requested=True)
    ).rowcount
    session.refresh(job)
    if not asked:
        raise JobConflict(f"job {job_id} is already {job.state}")
    return job


def queue_position(*, session: Session, job: Job) -> int | None:
    """1 for the job a free worker takes next; None when the job is not queued, or waits
    for its key's running jobs (max_running)."""
    if job.state != JobState.queued:
        return None
    return leases.claim_order(session=session).positions.get(job.id)


def describe(job: Job) -> JobRead:
    """The job as the API shows it (its queue position and live workers read when queued)."""
    session = object_session(job)
    if session is None:
        return _view(job)
    return describe_page(session=session, jobs=[job])[0]


def describe_page(*, session: Session, jobs: Sequence[Job]) -> list[JobRead]:
    """Jobs as the API shows them, in a constant number of queries however many are queued:
    the claim order once, the live workers once, the owners' names once."""
    names = _owner_names(session, {job.owner for job in jobs if job.owner is not None})
    if not any(job.state == JobState.queued for job in jobs):
        return [_view(job, owner_name=names.get(job.owner)) for job in jobs]
    order = leases.claim_order(session=session)
    alive = workers.count_alive(session=session)
    return [
        _view(job, position=order.positions.get(job.id), held=order.held.get(job.id),
              workers_alive=alive, owner_name=names.get(job.owner))
        if job.state == JobState.queued else _view(job, owner_name=names.get(job.owner))
        for job in jobs
    ]


def _owner_names(session: Session, owners: set[int]) -> dict[int, str]:
    """The names of these keys, in one query (none without owners)."""
    if not owners:
        return {}
    return dict(session.execute(
        select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(owners))
    ).all())


def _view(
    job: Job,
    *,
    position: int | None = None,
    held: int | None = None,
    workers_alive: int | None = None,
    owner_name: str | None = None,
) -> JobRead:
    spec = JobSpec.model_validate(job.spec)
    total = job.total_steps
    if job.state == JobState.succeeded:
        fraction = 1.0
    else:
        fraction = min(job.steps_done / total, 1.0) if total else 0.0
    running = job.state == JobState.running
    speed = job.steps_per_second if running else None
    if held is not None:
        note: str | None = (f"waiting for one of its key's running jobs to end: the key's "
                            f"max_running quota is {held}")
    elif workers_alive == 0:
        # Without a live worker a queued job would only look slow to start.
        note = NO_WORKER_NOTE
    else:
        note = None
    return JobRead(
        id=job.id,
        state=JobState(job.state),
        spec=spec,
        owner=job.owner,
        owner_name=owner_name if job.owner is not None else None,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=Progress(
            epoch=job.epoch,
            epochs=spec.epochs,
            step=job.steps_done,
            total_steps=total,
            fraction=round(fraction, 6),
        ),
        loss=finite_or_none(job.loss),
        test_accuracy=job.test_accuracy,
        error=job.error,
        cancel_requested=job.cancel_requested,
        study_id=job.study_id,
        trial=job.trial,
        stopped_early_at_epoch=job.stopped_early_at_epoch,
        samples_per_second=round(speed * spec.batch_size, 1) if speed else None,
        eta_seconds=round((total - job.steps_done) / speed, 1) if speed and total else None,
        queue_position=position,
        workers_alive=workers_alive,
        note=note,
    )


NO_WORKER_NOTE = (
    "no worker is alive to run it: start one with `tapefit worker` (or `tapefit serve "
    "--workers 1`)"
)


def model_artifact(*, session: Session, job_id: int) -> Artifact | None:
    """A succeeded job's stored model, if any."""
    return session.get(Artifact, job_id)


def delete_job(*, database: Database, job_id: int) -> str | None:
    """Delete a finished job and everything it owns: its loss rows, epochs, checkpoint and
    model. Returns the model's sha256 (None when it had none), for the API's cache.

    JobConflict ("cancel it first") when it is queued or running. The loss rows go first, in
    chunks of DELETE_CHUNK_ROWS, one short transaction each; then the job with the rest, in
    one. A deletion cut short leaves a finished job with fewer rows, and deleting it again
    finishes the work.
    """
    with database.session() as session:
        job = get_job(session=session, job_id=job_id)
        if JobState(job.state) not in FINAL_STATES:
            raise JobConflict(f"job {job_id} is {job.state}: cancel it first")
        last = session.scalar(select(func.max(Metric.step)).where(Metric.job_id == job_id))
    if last is not None:
        for low in range(last - last % DELETE_CHUNK_ROWS, -1, -DELETE_CHUNK_ROWS):
            with database.session(write=True) as session:
                session.execute(delete(Metric).where(Metric.job_id == job_id,
                                                     Metric.step >= low))
    with database.session(write=True) as session:
        sha256 = session.scalar(select(Artifact.sha256).where(Artifact.job_id == job_id))
        # Foreign keys with ON DELETE CASCADE take the epochs, checkpoint and model along.
        deleted = session.execute(
            delete(Job).where(Job.id == job_id, Job.state.in_(FINAL_STATES))
        ).rowcount
    if not deleted:
        raise JobNotFound(job_id)  # another request deleted it meanwhile
    return sha256


def expired_jobs(*, session: Session, finished_before: datetime, limit: int) -> list[int]:
    """Finished jobs that finished before `finished_before`, oldest first (for retention)."""
    return list(session.scalars(
        select(Job.id)
        .where(Job.finished_at < finished_before, Job.state.in_(FINAL_STATES))
        .order_by(Job.finished_at)
        .limit(limit)
    ).all())
