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
    succeeded, failed, cancelled, pruned: final, nothing leaves them.

Everything a worker does to a job goes through `service.queue.leases`, fenced by its lease.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from service.models import Artifact, Job, utcnow
from service.queue import leases, workers
from service.schemas import JobRead, JobSpec, JobState, Progress, finite_or_none


class JobNotFound(LookupError):
    def __init__(self, job_id: int | str) -> None:
        super().__init__(f"job {job_id} not found")


class JobConflict(RuntimeError):
    """The job is in a state that does not allow what was asked."""


def submit_job(*, session: Session, spec: JobSpec, idempotency_key: str | None = None) -> Job:
    """Queue a job; it is committed when the caller's transaction commits.

    With an idempotency key, a retry of an earlier submission returns that job instead.
    """
    if idempotency_key is not None:
        earlier = find_submission(session=session, idempotency_key=idempotency_key, spec=spec)
        if earlier is not None:
            return earlier
    job = Job(
        state=JobState.queued,
        spec=spec.model_dump(mode="json"),
        created_at=utcnow(),
        idempotency_key=idempotency_key,
    )
    try:
        # A savepoint, so that a concurrent twin that inserted the same key first does not
        # spoil the transaction (PostgreSQL; SQLite serialises its writers already).
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        earlier = find_submission(session=session, idempotency_key=idempotency_key, spec=spec)
        if earlier is None:
            raise
        return earlier
    return job


def find_submission(*, session: Session, idempotency_key: str, spec: JobSpec) -> Job | None:
    """The job an earlier submission with this key made, if any.

    The same key with another spec is a JobConflict: that client is not retrying.
    """
    earlier = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
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


def list_jobs(
    *, session: Session, state: JobState | None, limit: int, offset: int
) -> tuple[Sequence[Job], int]:
    """A page of jobs, newest first, and how many match in all."""
    query = select(Job)
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
    """1 for the job a free worker takes next; None when the job is not queued."""
    if job.state != JobState.queued:
        return None
    ahead = select(func.count()).where(Job.state == JobState.queued, Job.id < job.id)
    return (session.scalar(ahead) or 0) + 1


def describe(job: Job) -> JobRead:
    """The job as the API shows it (its queue position and live workers read when queued)."""
    session = object_session(job)
    if session is None or job.state != JobState.queued:
        return _view(job)
    return _view(job, position=queue_position(session=session, job=job),
                 workers_alive=workers.count_alive(session=session))


def describe_page(*, session: Session, jobs: Sequence[Job]) -> list[JobRead]:
    """Jobs as the API shows them, in a constant number of queries however many are queued."""
    queued = [job.id for job in jobs if job.state == JobState.queued]
    if not queued:
        return [_view(job) for job in jobs]
    ranked = (
        select(Job.id, func.row_number().over(order_by=Job.id).label("position"))
        .where(Job.state == JobState.queued)
        .subquery()
    )
    rows = session.execute(select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(queued)))
    positions = {job_id: position for job_id, position in rows}
    alive = workers.count_alive(session=session)
    return [
        _view(job, position=positions.get(job.id), workers_alive=alive)
        if job.state == JobState.queued else _view(job)
        for job in jobs
    ]


def _view(job: Job, *, position: int | None = None, workers_alive: int | None = None) -> JobRead:
    spec = JobSpec.model_validate(job.spec)
    total = job.total_steps
    if job.state == JobState.succeeded:
        fraction = 1.0
    else:
        fraction = min(job.steps_done / total, 1.0) if total else 0.0
    running = job.state == JobState.running
    speed = job.steps_per_second if running else None
    return JobRead(
        id=job.id,
        state=JobState(job.state),
        spec=spec,
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
        # Without a live worker a queued job would only look slow to start.
        note=NO_WORKER_NOTE if workers_alive == 0 else None,
    )


NO_WORKER_NOTE = (
    "no worker is alive to run it: start one with `tapefit worker` (or `tapefit serve "
    "--workers 1`)"
)


def model_artifact(*, session: Session, job_id: int) -> Artifact | None:
    """A succeeded job's stored model, if any."""
    return session.get(Artifact, job_id)
