"""`tapefit bench tenancy` runs and measures what it says (small numbers, no timing asserted)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import tenancy
from service.db import Database
from service.migrate import upgrade
from service.queue import leases


def test_the_tenancy_benchmark_claims_in_the_fair_order_and_puts_jobs_back(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    upgrade(url)
    database = Database(url)
    tenancy.fill(database, queued=60, owners=6)
    with database.session() as session:
        before = leases.claim_order(session=session)
    # Every other key may run 2 at once: its third job on waits for one of them to end.
    assert len(before.positions) == 3 * 10 + 3 * 2 and len(before.held) == 3 * 8
    assert len(tenancy.claims(database, rounds=10)) == 10
    with database.session() as session:
        assert leases.claim_order(session=session) == before  # every claimed job went back
    assert len(tenancy.positions(database, rounds=2)) == 2
    database.dispose()
    timed = tenancy.requests(url, rounds=3)
    assert set(timed) == {"admin token", "API key"}
