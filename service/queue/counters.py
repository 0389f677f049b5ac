"""Running totals of queue events, in the `counters` table: each is raised inside the
transaction that makes the change it counts, so it is exact however many workers and APIs
share the database, and any API reads the same figures (GET /metrics).

One upsert per raise: the row is made by its first event. Raised last in its transaction, so
that on PostgreSQL the row's lock is held only until the commit that follows.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.models import EventCounter

# A running job whose worker stopped heartbeating: requeued, or failed out of attempts.
LEASE_EXPIRED_REQUEUED = "lease_expired_requeued"
LEASE_EXPIRED_FAILED = "lease_expired_failed"
# A running job a worker gave back to the queue itself (stopping, or its database failed).
HANDED_BACK = "handed_back"
# Per-batch loss rows written by the workers.
LOSS_ROWS_WRITTEN = "loss_rows_written"


def add(*, session: Session, name: str, amount: int = 1) -> None:
    """Raise the counter `name` by `amount`, in the session's transaction."""
    if amount <= 0:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(EventCounter).values(name=name, value=amount)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[EventCounter.name],
            set_={"value": EventCounter.value + statement.excluded.value},
        )
    )


def read_all(*, session: Session) -> dict[str, int]:
    """Every counter by name; a counter with no event yet is absent (read it as 0)."""
    return dict(session.execute(select(EventCounter.name, EventCounter.value)).all())
