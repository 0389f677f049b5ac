"""Requeue the jobs of lost workers: a job whose heartbeat is older than the lease timeout.

Every worker sweeps between jobs and the API sweeps in the background, so a job is
recovered while anything of the service is up. The bound on recovery: lease_timeout, plus
one sweep interval (heartbeat_interval), plus an idle worker's poll_interval.

The API's sweeper also bounds storage: it deletes jobs past TAPEFIT_RETENTION_DAYS, and on
SQLite hands freed pages back and truncates a WAL that a big write left large.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import OperationalError

from service.config import Settings
from service.db import Database
from service.models import utcnow
from service.queue import counters, jobs, leases
from service.schemas import JobState

log = logging.getLogger("tapefit.sweeper")


def sweep_once(database: Database, settings: Settings) -> list[tuple[int, JobState]]:
    """One pass: requeue (or fail, out of attempts) every stalled running job."""
    with database.session(write=True) as session:
        moved = leases.requeue_stalled(
            session=session,
            lease_timeout=settings.lease_timeout,
            max_attempts=settings.max_attempts,
        )
        failed = sum(state == JobState.failed for _, state in moved)
        counters.add(session=session, name=counters.LEASE_EXPIRED_FAILED, amount=failed)
        counters.add(session=session, name=counters.LEASE_EXPIRED_REQUEUED,
                     amount=len(moved) - failed)
    for job_id, state in moved:
        log.warning("job %s: its worker stopped heartbeating; now %s", job_id, state,
                    extra={"job_id": job_id})
    return moved


# A deleted job: its id and its model's sha256 (None when it had none).
Deleted = tuple[int, str | None]
# Expired jobs deleted per pass: retention catches up over passes, never in one long one.
RETENTION_BATCH = 20
# SQLite upkeep: the WAL is truncated once it has grown past this and no job is running;
# free pages are handed back to the file system this many at a time (4 MiB of 4 KiB pages),
# once more than this many are free.
WAL_TRUNCATE_BYTES = 4 * 1024 * 1024
VACUUM_PAGES = 1024
VACUUM_ABOVE_PAGES = 256


def delete_expired(database: Database, settings: Settings) -> list[Deleted]:
    """Delete up to RETENTION_BATCH jobs that finished more than TAPEFIT_RETENTION_DAYS ago,
    each with all it owns (service.queue.jobs.delete_job). Nothing when retention is off."""
    if settings.retention_days is None:
        return []
    cutoff = utcnow() - timedelta(days=settings.retention_days)
    with database.session() as session:
        expired = jobs.expired_jobs(session=session, finished_before=cutoff,
                                    limit=RETENTION_BATCH)
    deleted = []
    for job_id in expired:
        try:
            deleted.append((job_id, jobs.delete_job(database=database, job_id=job_id)))
        except jobs.JobNotFound:
            continue  # deleted meanwhile (by a user, or another API's sweeper)
        log.info("job %s: deleted, finished more than %g days ago", job_id,
                 settings.retention_days)
    return deleted


def compact_sqlite(database: Database) -> None:
    """SQLite upkeep after big writes and deletions. Free pages go back to the file system
    (on a file made with auto_vacuum=INCREMENTAL; see `make_incremental`), a few thousand
    per transaction; and a WAL grown large (a big job's rows, a deletion) is truncated once
    no job runs, so it does not keep its high-water size on disk. Nothing on PostgreSQL,
    whose autovacuum does this."""
    if not database.is_sqlite:
        return
    path = database.engine.url.database
    wal = Path(f"{path}-wal") if path else None
    with database.engine.connect() as connection:
        # The driver's own connection: autocommit, so each PRAGMA is its own short
        # transaction rather than one SQLAlchemy would hold open around them.
        raw = connection.connection.driver_connection
        if raw.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
            for _ in range(64):  # at most 256 MiB a pass
                if raw.execute("PRAGMA freelist_count").fetchone()[0] <= VACUUM_ABOVE_PAGES:
                    break
                # As a script: the sqlite3 module would step the PRAGMA once, freeing one
                # page; a script runs each statement to its end.
                raw.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
        if wal is None or not wal.exists() or wal.stat().st_size <= WAL_TRUNCATE_BYTES:
            return
        running = raw.execute("SELECT count(*) FROM jobs WHERE state = 'running'").fetchone()[0]
        if running == 0:
            busy, _, _ = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                log.info("the SQLite WAL was truncated (it had reached %s bytes)",
                         f"{wal.stat().st_size if wal.exists() else 0:,}")


_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def make_incremental(database: Database) -> bool:
    """Switch an existing SQLite file to auto_vacuum=INCREMENTAL (files made since this
    version start that way), so space freed by deletions can go back to the file system.
    That takes a VACUUM: the whole file is rewritten, with as much free disk again needed
    meanwhile, so it is a command (`tapefit db compact`), not something done at start.
    Returns False when it was so already (then it only reclaims the free pages)."""
    if not database.is_sqlite:
        raise ValueError("only a SQLite database has auto_vacuum; PostgreSQL's autovacuum "
                         "reclaims space by itself")
    with database.engine.connect() as connection:
        raw = connection.connection.driver_connection
        already = raw.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL
        raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
        raw.execute("VACUUM")
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return not already


async def sweep_forever(
    database: Database,
    settings: Settings,
    after: Callable[[list[Deleted]], object] | None = None,
) -> None:
    """The API's background sweeper, one pass every heartbeat_interval until cancelled:
    requeue the jobs of lost workers, delete expired jobs (retention), keep SQLite compact;
    then `after` is told which jobs were deleted (the API's model cache forgets them)."""
    while True:
        await asyncio.sleep(settings.heartbeat_interval)
        try:
            await asyncio.to_thread(sweep_once, database, settings)
            deleted = await asyncio.to_thread(delete_expired, database, settings)
            await asyncio.to_thread(compact_sqlite, database)
            if after is not None:
                await asyncio.to_thread(after, deleted)
        except OperationalError as exc:  # a busy database: the next pass will do
            log.warning("sweep skipped: %s", exc)
