"""A worker's hold on a job: the claim, every write it makes while it runs the job, its
heartbeat and checkpoints, and the sweep that requeues the jobs of lost workers.

Each write names the worker's `Lease` and changes nothing when the job is no longer running
under that lease's fencing token: a worker that lost its job (paused, partitioned, presumed
dead) cannot overwrite the history that the job's next worker writes.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Dialect,
    Select,
    String,
    Update,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased

from service.models import ApiKey, Artifact, Checkpoint, EpochSummary, Job, Metric, utcnow
from service.queue import counters
from service.schemas import EpochRead, JobState, finite_or_none


class LeaseLost(RuntimeError):
    """The job is no longer running under this worker's lease."""


@dataclass(frozen=True)
class Lease:
    """A worker's hold on a job. `token` is the job's lease epoch at the claim: every claim
    raises it, so it tells two claims of the same job apart."""

    job_id: int
    worker_id: str
    token: int


# Every claim on PostgreSQL holds this transaction-scoped advisory lock: claims run one at a
# time, so each sees the running jobs every earlier claim started (fairness and max_running
# are decided on committed counts). The lock is held for the claim's statement and its commit,
# about a millisecond of the server's time (see `_claim_in_one_trip`).
_CLAIM_LOCK_KEY = 0x7A9EF18
# A job's owner for grouping: the admin's jobs (no owner) count as owner 0, which no key has.
# A literal, not a bound parameter: PostgreSQL must see the same expression in GROUP BY.
_OWNER = func.coalesce(Job.owner, literal_column("0"))


def _owners_in_turn() -> Select[tuple[int | None, int, int]]:
    """The owners with queued jobs, in their turn: (owner, busy, first), by the fewest
    running jobs (busy), then the oldest queued job (first); an owner at its key's
    max_running is left out. Grouped by the bare column, the aggregates read the
    (state, owner) index in its order."""
    queued = (
        select(Job.owner.label("owner"), func.min(Job.id).label("first"))
        .where(Job.state == JobState.queued)
        .group_by(Job.owner)
        .subquery("queued_owners")
    )
    running = (
        select(Job.owner.label("owner"), func.count().label("jobs"))
        .where(Job.state == JobState.running)
        .group_by(Job.owner)
        .subquery("running_owners")
    )
    busy = func.coalesce(running.c.jobs, 0)
    return (
        select(queued.c.owner, busy.label("busy"), queued.c.first)
        .outerjoin(running, running.c.owner.is_not_distinct_from(queued.c.owner))
        .outerjoin(ApiKey, ApiKey.id == queued.c.owner)
        .where(or_(ApiKey.max_running.is_(None), busy < ApiKey.max_running))
        .order_by(busy, queued.c.first)
    )


def _next_job() -> Select[tuple[int]]:
    """The job the next claim takes, as a query: the fair order.

    Owners first: the owner (an API key; the admin's jobs count as one owner) with the fewest
    running jobs, and among those the one whose oldest job has waited longest; an owner at
    its key's max_running is passed over. Then, among that owner's queued jobs, the highest
    `priority`, then the oldest. One user's hundred queued jobs therefore take turns with
    another's one. `claim_order` is the same rule in Python, for queue positions.

    The owner is chosen first, by itself (`turn`: one row), and only its jobs are sorted:
    grouped by the bare column, the aggregates read the (state, owner) index in its order,
    and the last step is an index search. Sorting every queued job instead cost a claim
    40 ms with 3,000 queued on SQLite, all of it under the write lock.
    """
    turn = _owners_in_turn().limit(1).subquery("turn")
    return (
        select(Job.id)
        .join(turn, Job.owner.is_not_distinct_from(turn.c.owner))
        .where(Job.state == JobState.queued)
        .order_by(Job.priority.desc(), Job.id)
        .limit(1)
    )


def _claim_next_job(*, worker_id: Any, now: Any) -> Update:
    """`_next_job` and its claim in one statement, for PostgreSQL, whose claims take turns
    under a lock: the owners in their turn (each aggregate computed once), the first job of
    each, by priority, that no other transaction holds (`LATERAL`, `SKIP LOCKED`), and the
    UPDATE of the first owner's.

    The owners are sorted before the `LATERAL`, so the nested loop stops at the first owner
    with a free job: only that job is locked, and only that owner's jobs are sorted (1 ms
    with 3,000 jobs of 50 owners queued; the `LATERAL` run for every owner took 10). The same
    order as `_next_job`: it sorts by (busy, first) before (priority, id), and the pair
    (busy, first) belongs to one owner. One statement, so that the lock, the claim and the
    commit can go to the server together (`_claim_in_one_trip`).
    """
    turns = _owners_in_turn().subquery("turns")
    candidate = aliased(Job, name="candidate")
    # Two index searches on (state, owner), one of them for the admin's jobs (no owner).
    theirs = or_(candidate.owner == turns.c.owner,
                 and_(turns.c.owner.is_(None), candidate.owner.is_(None)))
    first_job = (
        select(candidate.id)
        .where(candidate.state == JobState.queued, theirs)
        .order_by(candidate.priority.desc(), candidate.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .lateral("first_job")
    )
    # The ORDER BY repeats the owners' order, which the planner keeps without sorting again.
    # A scalar subquery, run once (an InitPlan): joined to the UPDATE as a FROM item, it may
    # run again for every queued row, and each run skips the job the last one claimed.
    pick = (
        select(first_job.c.id)
        .select_from(turns)
        .join(first_job, true())
        .order_by(turns.c.busy, turns.c.first)
        .limit(1)
        .scalar_subquery()
    )
    return _claim(Job.id == pick, worker_id=worker_id, now=now)


def _claim(target: ColumnElement[bool], *, worker_id: Any, now: Any) -> Update:
    """queued -> running for the job `target` names, with a new lease."""
    return (
        update(Job)
        .where(target, Job.state == JobState.queued)
        .values(
            state=JobState.running,
            worker_id=worker_id,
            attempts=Job.attempts + 1,
            lease_epoch=Job.lease_epoch + 1,
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
        )
        .returning(Job.id, Job.lease_epoch)
        .execution_options(synchronize_session=False)
    )


def claim_job(*, session: Session, worker_id: str) -> Lease | None:
    """Atomically take the next queued job in the fair order (`_next_job`); None when no job
    can start (the queue is empty, or every owner with queued jobs is at its max_running).

    PostgreSQL: claims take turns under an advisory lock, and the chosen row is locked (a
    row another transaction holds, a cancel for one, is skipped); with psycopg the claim is
    committed before this returns (`_claim_in_one_trip`). SQLite has one writer at a time
    (the session began with BEGIN IMMEDIATE), so a single UPDATE ... RETURNING is atomic; the
    caller's session commits it.
    """
    now = utcnow()
    if session.get_bind().dialect.name == "postgresql":
        claimed = _claim_on_postgresql(session, worker_id=worker_id, now=now)
    else:
        claim = _claim(Job.id == _next_job().scalar_subquery(), worker_id=worker_id, now=now)
        claimed = session.execute(claim).first()
    if claimed is None:
        return None
    job_id, token = claimed
    return Lease(job_id=job_id, worker_id=worker_id, token=token)


# The claim's statement on PostgreSQL, its worker and time as parameters: built once.
_CLAIM_NEXT_JOB = _claim_next_job(
    worker_id=bindparam("worker_id", type_=String),
    now=bindparam("now", type_=Job.__table__.c.heartbeat_at.type),
)
_TAKE_CLAIM_LOCK = "SELECT pg_advisory_xact_lock(%s)"
# The claim's commit does not wait for its WAL to reach the disk (the lock is released at the
# commit: waiting, every claim behind it waited too, 0.5-8 ms a claim here). A crash of the
# server can then lose a claim made in its last moments, and only that: the job is queued
# again, as before the claim. Nothing that depends on the claim can outlive it, since the
# write log is flushed in order: the claiming worker's next write (`start_job`, a
# synchronous commit) flushes the claim with it, or fails its lease check after the crash.
_NO_WAIT_FOR_THE_DISK = "SET LOCAL synchronous_commit = off"


def _claim_on_postgresql(
    session: Session, *, worker_id: str, now: datetime
) -> tuple[int, int] | None:
    """(job id, lease token) of the job claimed under the claims' lock, or None."""
    params = {"worker_id": worker_id, "now": now}
    connection = session.connection()
    if connection.dialect.driver == "psycopg" and _nothing_done_yet(connection):
        return _claim_in_one_trip(connection, params)
    session.execute(select(func.pg_advisory_xact_lock(_CLAIM_LOCK_KEY)))
    row = session.execute(_CLAIM_NEXT_JOB, params).first()
    return None if row is None else (row[0], row[1])


def _nothing_done_yet(connection: Connection) -> bool:
    """Whether the session's transaction has run nothing yet. Only then may the claim commit
    it: what a caller wrote before the claim stays the caller's to commit or roll back (and
    to commit durably)."""
    from psycopg.pq import TransactionStatus

    driver = connection.connection.driver_connection
    return driver.info.transaction_status == TransactionStatus.IDLE


def _claim_in_one_trip(connection: Connection, params: dict[str, Any]) -> tuple[int, int] | None:
    """The lock, the claim and the commit, sent at once (psycopg's pipeline mode): the server
    runs them back to back, so the lock is held for the server's time alone (and not for a
    flush of the write log, `_NO_WAIT_FOR_THE_DISK`).

    Sent one by one (the lock, then the owners, their job, the claim and the commit), the
    lock was also held while the claiming thread waited for its next turn at the GIL after
    each reply, and every other claim waited behind it: with 50 threads a process that was
    most of a claim's time (`tapefit bench queue`). The claim commits the session's
    transaction itself: SQLAlchemy's commit at the end of the caller's session then finds
    nothing to do, and what the caller runs after the claim goes in a new transaction."""
    sql, constants = _compiled_claim(connection.dialect)
    driver = connection.connection.driver_connection
    with _as_sqlalchemy_errors(connection, sql, params), driver.cursor() as cursor:
        with driver.pipeline():
            driver.execute(_NO_WAIT_FOR_THE_DISK)
            driver.execute(_TAKE_CLAIM_LOCK, (_CLAIM_LOCK_KEY,))
            cursor.execute(sql, {**constants, **params})
            driver.commit()
        row = cursor.fetchone()
    return None if row is None else (row[0], row[1])


@functools.lru_cache(maxsize=8)  # one entry per engine's dialect
def _compiled_claim(dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """The claim's SQL for the driver, and its constant parameters (states, limits)."""
    compiled = _CLAIM_NEXT_JOB.compile(dialect=dialect)
    constants = {name: value for name, value in compiled.params.items()
                 if name not in ("worker_id", "now")}
    return str(compiled), constants


@contextmanager
def _as_sqlalchemy_errors(
    connection: Connection, statement: str, params: dict[str, Any] | None = None
) -> Iterator[None]:
    """Errors of the driver's own calls raised as SQLAlchemy raises those of its statements
    (a lost server: an OperationalError, and the connection invalidated), so the worker's
    handling of them (wait and retry, hand the job back) holds for these calls too."""
    dbapi = connection.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        driver = connection.connection.driver_connection
        lost = connection.dialect.is_disconnect(exc, driver, None)
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(statement, params, exc, dbapi.Error,
                                  connection_invalidated=lost,
                                  dialect=connection.dialect) from exc


@dataclass(frozen=True)
class ClaimOrder:
    """Where each queued job stands: `positions[id]` is 1 for the job the next claim takes,
    2 for the one after, and so on, if no running job ended meanwhile; `held` maps each job
    that waits for one of its owner's running jobs to end (max_running) to that quota."""

    positions: dict[int, int]
    held: dict[int, int]


def claim_order(*, session: Session) -> ClaimOrder:
    """The fair order of `_next_job`, for every queued job at once, from one read of the
    queued jobs' ids, owners and priorities, one of the running counts and one of the quotas.

    An owner's k-th claim (its jobs by priority, then age) comes when it has `running + k`
    jobs running and its oldest job still queued is the oldest of those not yet claimed;
    each owner's claims come in that increasing order, so the whole order is those keys
    sorted, and the claims need not be replayed one by one."""
    jobs_ = Job.__table__.c
    queued = session.execute(
        select(jobs_.id, jobs_.owner, jobs_.priority).where(jobs_.state == JobState.queued)
    ).all()
    if not queued:
        return ClaimOrder({}, {})
    running = dict(session.execute(
        select(_OWNER, func.count()).where(Job.state == JobState.running).group_by(_OWNER)
    ).all())
    by_owner: dict[int, list[tuple[int, int]]] = {}
    for job_id, owner, priority in queued:
        by_owner.setdefault(owner or 0, []).append((-priority, job_id))
    key_ids = [owner for owner in by_owner if owner]  # the admin's jobs (0) have no quota
    limits = dict(session.execute(
        select(ApiKey.id, ApiKey.max_running)
        .where(ApiKey.id.in_(key_ids), ApiKey.max_running.is_not(None))
    ).all()) if key_ids else {}
    keys: list[tuple[int, int, int]] = []
    held: dict[int, int] = {}
    for owner, waiting in by_owner.items():
        waiting.sort()
        # The oldest job still queued before each claim: the smallest id from there on.
        oldest = list(itertools.accumulate((job_id for _, job_id in reversed(waiting)), min))
        oldest.reverse()
        busy, limit = running.get(owner, 0), limits.get(owner)
        for turn, ((_, job_id), first) in enumerate(zip(waiting, oldest, strict=True)):
            if limit is not None and busy + turn >= limit:
                held[job_id] = limit  # waits for one of its owner's running jobs to end
            else:
                keys.append((busy + turn, first, job_id))
    keys.sort()
    return ClaimOrder({job_id: place for place, (_, _, job_id) in enumerate(keys, 1)}, held)


def _held(lease: Lease) -> list[Any]:
    """The WHERE clause that makes a worker's write conditional on its lease."""
    return [
        Job.id == lease.job_id,
        Job.state == JobState.running,
        Job.worker_id == lease.worker_id,
        Job.lease_epoch == lease.token,
    ]


def _update_held(session: Session, lease: Lease, **values: Any) -> None:
    result = session.execute(
        update(Job)
        .where(*_held(lease))
        .values(heartbeat_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise LeaseLost(f"job {lease.job_id} is no longer held by {lease.worker_id}")


def start_job(
    *, session: Session, lease: Lease, total_steps: int, step: int = 0, epoch: int = 0
) -> None:
    """Record the run's length and where it starts. A resumed job starts at its checkpoint
    (`step`, `epoch`), and the history written after that point is dropped, so the finished
    job has exactly one row per step."""
    session.execute(delete(Metric).where(Metric.job_id == lease.job_id, Metric.step >= step))
    session.execute(
        delete(EpochSummary).where(
            EpochSummary.job_id == lease.job_id, EpochSummary.epoch >= epoch
        )
    )
    last_loss = session.scalar(
        select(Metric.loss).where(Metric.job_id == lease.job_id, Metric.step == step - 1)
    )
    _update_held(
        session, lease, total_steps=total_steps, steps_done=step, epoch=epoch, loss=last_loss
    )


def record_progress(
    *,
    session: Session,
    lease: Lease,
    rows: Sequence[dict[str, Any]],
    steps_per_second: float | None = None,
) -> bool:
    """Write a group of metric rows and the job's progress; True when a cancel was asked.

    Each row is a dict with the Metric columns but job_id. The lease is checked first, by the
    UPDATE of the job's progress, which also reads whether a cancel was asked: a stale worker
    writes no rows. The rows then go in at once (`_insert_metrics`).
    """
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if rows:
        values["steps_done"] = rows[-1]["step"] + 1
        values["loss"] = finite_or_none(rows[-1]["loss"])
    if steps_per_second is not None:
        values["steps_per_second"] = steps_per_second
    cancel = session.execute(
        update(Job)
        .where(*_held(lease))
        .values(**values)
        .returning(Job.cancel_requested)
        .execution_options(synchronize_session=False)
    ).scalar()
    if cancel is None:
        raise LeaseLost(f"job {lease.job_id} is no longer held by {lease.worker_id}")
    if rows:
        _insert_metrics(session, lease.job_id, rows)
    return bool(cancel)


_METRIC_COLUMNS = ("step", "epoch", "batch", "loss", "accuracy", "time")
_COPY_METRICS = f"COPY metrics (job_id, {', '.join(_METRIC_COLUMNS)}) FROM STDIN"


def _insert_metrics(session: Session, job_id: int, rows: Sequence[dict[str, Any]]) -> None:
    """A group of rows in one statement. With psycopg, PostgreSQL's COPY: the rows are
    encoded in C, where SQLAlchemy's executemany spends about 20 us of Python per row, the
    most of a worker's write and, with a hundred workers, of the database's client CPU (see
    `tapefit bench queue`). In the session's transaction, so the lease check above fences it.
    """
    if session.get_bind().dialect.driver == "psycopg":
        connection = session.connection()
        driver = connection.connection.driver_connection
        with (_as_sqlalchemy_errors(connection, _COPY_METRICS), driver.cursor() as cursor,
              cursor.copy(_COPY_METRICS) as copy):
            for row in rows:
                copy.write_row((job_id, row["step"], row["epoch"], row["batch"],
                                finite_or_none(row["loss"]), row["accuracy"], row["time"]))
        return
    session.execute(
        Metric.__table__.insert(),
        [{**row, "job_id": job_id, "loss": finite_or_none(row["loss"])} for row in rows],
    )


def record_epoch(*, session: Session, lease: Lease, summary: EpochRead) -> None:
    """Write one finished epoch's figures; the job's `epoch` counts the finished ones."""
    _update_held(session, lease, epoch=summary.epoch + 1)
    row = {
        k: finite_or_none(v) if isinstance(v, float) else v
        for k, v in summary.model_dump().items()
    }
    session.add(EpochSummary(job_id=lease.job_id, **row))


def finish_job(
    *, session: Session, lease: Lease, test_loss: float, test_accuracy: float, model: bytes,
    stopped_early_at_epoch: int | None = None, state: JobState = JobState.succeeded,
) -> None:
    """running -> succeeded, with the final test figures and the exported model, together:
    a job is never succeeded without its model, and a stale worker's model is never kept.
    (`mark_pruned` ends a study's trial the same way, as pruned.)"""
    _update_held(
        session,
        lease,
        state=state,
        finished_at=utcnow(),
        test_loss=finite_or_none(test_loss),
        test_accuracy=test_accuracy,
        stopped_early_at_epoch=stopped_early_at_epoch,
    )
    session.merge(
        Artifact(job_id=lease.job_id, content=model, sha256=hashlib.sha256(model).hexdigest())
    )
    drop_checkpoint(session, lease.job_id)


def mark_pruned(
    *, session: Session, lease: Lease, test_loss: float, test_accuracy: float, model: bytes
) -> None:
    """running -> pruned: a study's pruner stopped the trial after an epoch. Its rows stay,
    and its test figures and model are those of that epoch."""
    finish_job(session=session, lease=lease, test_loss=test_loss, test_accuracy=test_accuracy,
               model=model, state=JobState.pruned)


def fail_job(*, session: Session, lease: Lease, error: str) -> None:
    """running -> failed, keeping the reason for the user."""
    _update_held(session, lease, state=JobState.failed, finished_at=utcnow(), error=error)
    drop_checkpoint(session, lease.job_id)


def mark_cancelled(*, session: Session, lease: Lease) -> None:
    """running -> cancelled, once the worker has stopped at a batch boundary."""
    _update_held(session, lease, state=JobState.cancelled, finished_at=utcnow())
    drop_checkpoint(session, lease.job_id)


def release_job(*, session: Session, lease: Lease) -> None:
    """running -> queued, for a worker shutting down. The history stays: the next worker
    resumes from the checkpoint and rewinds the rows written after it. A hand-back is not
    a lost worker, so it gives back its attempt."""
    _update_held(
        session, lease, state=JobState.queued, worker_id=None, attempts=Job.attempts - 1
    )
    counters.add(session=session, name=counters.HANDED_BACK)


def heartbeat(*, session: Session, lease: Lease) -> None:
    """Tell the sweepers this worker is alive (LeaseLost when the job was taken from it)."""
    _update_held(session, lease)


def save_checkpoint(*, session: Session, lease: Lease, step: int, content: bytes) -> None:
    """Replace the job's checkpoint with one taken after `step` batches. Fenced like every
    worker write: a worker that lost its lease cannot overwrite the new holder's."""
    _update_held(session, lease)
    # Delete and insert rather than merge, which would first read the old blob back.
    drop_checkpoint(session, lease.job_id)
    session.execute(
        insert(Checkpoint).values(job_id=lease.job_id, step=step, lease_epoch=lease.token,
                                  content=content, created_at=utcnow())
    )


def load_checkpoint(*, session: Session, job_id: int) -> Checkpoint | None:
    """The job's newest checkpoint, if it has one."""
    return session.get(Checkpoint, job_id)


def drop_checkpoint(session: Session, job_id: int) -> None:
    """A job in a final state never resumes: its checkpoint is dead weight."""
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))


def requeue_stalled(
    *, session: Session, lease_timeout: float, max_attempts: int
) -> list[tuple[int, JobState]]:
    """Requeue running jobs whose worker stopped heartbeating; fail those out of attempts.

    Returns (job id, new state) for each job it moved.
    """
    cutoff = utcnow() - timedelta(seconds=lease_timeout)
    stalled = session.scalars(
        select(Job)
        .where(Job.state == JobState.running, Job.heartbeat_at < cutoff)
        .with_for_update(skip_locked=True)
    ).all()
    moved = []
    for job in stalled:
        if job.attempts >= max_attempts:
            job.state = JobState.failed
            job.finished_at = utcnow()
            job.error = (
                f"its worker was lost {job.attempts} times (no heartbeat for "
                f"{lease_timeout:g} s); giving up after {max_attempts} attempts"
            )
            drop_checkpoint(session, job.id)
        else:
            job.state = JobState.queued
        job.worker_id = None
        moved.append((job.id, JobState(job.state)))
    return moved
