"""Running totals of queue events, in the `counters` table: each is raised inside the
transaction that makes the change it counts, so it is exact however many workers and APIs
share the database, and any API reads the same figures (GET /metrics).

One upsert per raise, made last in its transaction (on PostgreSQL it holds the row's lock
until the commit). Only for rare events: the sweeps that take jobs from lost workers and the
hand-backs. Loss rows are not counted here: one more statement in every flush cost the queue
a third of its write capacity (`tapefit bench queue`, 50 workers on PostgreSQL: 9,000 rows/s
against 14,000), so /metrics reads the rows stored from each job's `steps_done` instead.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.models import EventCounter

# A running job whose worker stopped heartbeating: requeued, or failed out of attempts.
LEASE_EXPIRED_REQUEUED = "lease_expired_requeued"
LEASE_EXPIRED_FAILED = "lease_expired_failed"
# A running job a worker gave back to the queue itself (stopping, or its database failed).
HANDED_BACK = "handed_back"


def add(*, session: Session, name: str, amount: int = 1) -> None:
    """Raise the counter `name` by `amount`, in the session's transaction."""
    if amount <= 0:
        return
    dialect = session.get_bind().dialect.name
    session.execute(_UPSERT[dialect == "postgresql"], {"name": name, "value": amount})


def read_all(*, session: Session) -> dict[str, int]:
    """Every counter by name; a counter with no event yet is absent (read it as 0)."""
    return dict(session.execute(select(EventCounter.name, EventCounter.value)).all())


def _upsert(dialect: Any) -> Any:
    statement = dialect.insert(EventCounter).values(
        name=bindparam("name"), value=bindparam("value")
    )
    return statement.on_conflict_do_update(
        index_elements=[EventCounter.name],
        set_={"value": EventCounter.value + statement.excluded.value},
    )


# Built once: building the statement costs more than running it.
_UPSERT = {True: _upsert(postgresql), False: _upsert(sqlite)}
