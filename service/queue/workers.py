"""Which workers are alive: each worker process keeps a row in `workers` fresh, idle or
training, and the API counts the fresh ones for readiness and for a queued job's view.

A row is fresh until its `expires_at`, its last heartbeat plus the worker's lease timeout: the
same bound after which the sweepers take a silent worker's job away. A worker deletes its row
when it stops cleanly; the row of one that died expires, and is deleted an hour later by the
next worker that starts.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.db import Database
from service.models import WorkerHeartbeat, utcnow
from service.schemas import Readiness

log = logging.getLogger("tapefit.workers")

# How long the row of a worker that died stays, for someone looking at the table.
FORGET_AFTER = timedelta(hours=1)


def beat(
    *, session: Session, worker_id: str, hostname: str, pid: int, lease_timeout: float
) -> None:
    """Record that this worker is alive, for `lease_timeout` seconds from now."""
    now = utcnow()
    expires_at = now + timedelta(seconds=lease_timeout)
    refreshed = session.execute(
        update(WorkerHeartbeat)
        .where(WorkerHeartbeat.id == worker_id)
        .values(heartbeat_at=now, expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )
    if refreshed.rowcount == 1:
        return
    # The worker's first beat (or its row was forgotten while it was paused for an hour).
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.expires_at < now - FORGET_AFTER))
    session.add(WorkerHeartbeat(id=worker_id, hostname=hostname, pid=pid, started_at=now,
                                heartbeat_at=now, expires_at=expires_at))


def leave(*, session: Session, worker_id: str) -> None:
    """Remove a worker that is stopping cleanly: it no longer counts as alive."""
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.id == worker_id))


def count_alive(*, session: Session) -> int:
    """Workers whose last heartbeat is within their lease timeout."""
    alive = select(func.count()).where(WorkerHeartbeat.expires_at > utcnow())
    return session.scalar(alive) or 0


def readiness(*, database: Database) -> Readiness:
    """Whether the service can run jobs now: the database answers and a worker is alive."""
    try:
        with database.session() as session:
            alive = count_alive(session=session)
    except SQLAlchemyError as exc:
        log.warning("not ready: the database does not answer: %s", exc)
        return Readiness(status="not ready", workers_alive=None,
                         detail=f"the database does not answer ({type(exc).__name__})")
    if alive == 0:
        return Readiness(
            status="not ready", workers_alive=0,
            detail="no worker is alive: none has heartbeated within its lease timeout "
                   "(start one with `tapefit worker`)",
        )
    return Readiness(status="ready", workers_alive=alive)
