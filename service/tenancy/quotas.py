"""What a key may hold: `max_queued` jobs waiting, `max_running` jobs training at once.

`max_queued` is checked when a job is submitted (429 with Retry-After past it). `max_running`
never refuses a request: a key may queue more, and the claim (service/queue/leases.py) does
not start another of its jobs while it has that many running, so the rest wait their turn.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import ApiKey, Job
from service.schemas import JobState
from service.tenancy.identity import Identity

# Seconds a client over its quota is told to wait: jobs take minutes, not milliseconds.
RETRY_AFTER_S = 30


class QuotaExceeded(RuntimeError):
    """A key is at one of its quotas (429 with Retry-After)."""

    retry_after = RETRY_AFTER_S


def check_submit(*, session: Session, identity: Identity) -> None:
    """QuotaExceeded when one more queued job would take `identity` past its max_queued.

    The key's row is locked first (PostgreSQL), so two submissions at once cannot both see
    room for one; SQLite's writers are one at a time already."""
    if identity.key_id is None or identity.max_queued is None:
        return
    session.scalar(select(ApiKey.id).where(ApiKey.id == identity.key_id).with_for_update())
    queued = session.scalar(
        select(func.count()).where(Job.owner == identity.key_id, Job.state == JobState.queued)
    ) or 0
    if queued >= identity.max_queued:
        raise QuotaExceeded(
            f"key '{identity.name}' has {queued} queued jobs, its max_queued quota "
            f"({identity.max_queued}): wait for one to start, or cancel one"
        )
