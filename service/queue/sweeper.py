"""Requeue the jobs of lost workers: a job whose heartbeat is older than the lease timeout.

Every worker sweeps between jobs and the API sweeps in the background, so a job is
recovered while anything of the service is up. The bound on recovery: lease_timeout, plus
one sweep interval (heartbeat_interval), plus an idle worker's poll_interval.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import OperationalError

from service.config import Settings
from service.db import Database
from service.queue import counters, leases
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


async def sweep_forever(database: Database, settings: Settings) -> None:
    """The API's background sweeper, one pass every heartbeat_interval until cancelled."""
    while True:
        await asyncio.sleep(settings.heartbeat_interval)
        try:
            await asyncio.to_thread(sweep_once, database, settings)
        except OperationalError as exc:  # a busy database: the next pass will do
            log.warning("sweep skipped: %s", exc)
