"""Fair claiming between API keys, priorities within a key, max_running in the claim, and
queue positions that tell the claim order, on SQLite and PostgreSQL; on PostgreSQL, a claim
beside other transactions (a job one of them holds, a connection lost mid-claim)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from service.db import Database, is_transient
from service.models import Job
from service.queue import jobs, leases
from service.schemas import JobSpec, JobState
from service.tenancy import keys
from service.tenancy.identity import Scope
from tests.helpers.settings import empty_postgres


def make_key(database: Database, name: str, max_running: int | None = None) -> int:
    with database.session(write=True) as session:
        key, _ = keys.create_key(session=session, name=name, scopes=[Scope.train],
                                 max_running=max_running)
        return key.id


def submit(database: Database, owner: int | None, n: int = 1, priority: int = 0) -> list[int]:
    with database.session(write=True) as session:
        return [jobs.submit_job(session=session, spec=JobSpec(priority=priority),
                                owner=owner).id for _ in range(n)]


def claim(database: Database) -> int | None:
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w")
    return lease.job_id if lease else None


def finish(database: Database, job_id: int) -> None:
    with database.session(write=True) as session:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(state=JobState.succeeded))


def positions(database: Database) -> leases.ClaimOrder:
    with database.session() as session:
        return leases.claim_order(session=session)


def test_one_users_hundred_jobs_do_not_starve_anothers_one(database: Database) -> None:
    alice, bob = make_key(database, "alice"), make_key(database, "bob")
    alices = submit(database, alice, 100)
    (bobs,) = submit(database, bob)
    # Two workers: one takes alice's oldest, the other bob's one, not alice's second.
    assert claim(database) == alices[0]
    assert claim(database) == bobs
    # Bob has nothing queued: alice's jobs follow, oldest first.
    assert claim(database) == alices[1]


def test_the_owner_with_fewest_running_goes_first_then_the_longest_waiting(
    database: Database,
) -> None:
    alice, bob, carol = (make_key(database, name) for name in ("alice", "bob", "carol"))
    a = submit(database, alice, 3)
    b = submit(database, bob, 2)
    c = submit(database, carol, 1)
    admin = submit(database, None, 1)  # the admin's jobs take turns as one more owner
    order = positions(database).positions
    claimed = [claim(database) for _ in range(7)]
    # Round one by age of each owner's oldest job, then round two, then what is left.
    assert claimed == [a[0], b[0], c[0], admin[0], a[1], b[1], a[2]]
    assert [job for job, _ in sorted(order.items(), key=lambda item: item[1])] == claimed
    assert claim(database) is None


def test_priority_orders_a_keys_own_jobs_not_the_others(database: Database) -> None:
    alice, bob = make_key(database, "alice"), make_key(database, "bob")
    (low,) = submit(database, alice)
    (bobs,) = submit(database, bob)
    (high,) = submit(database, alice, priority=5)
    (higher,) = submit(database, bob, priority=9)
    order = positions(database).positions
    # Alice waited longest, so she goes first, with her high-priority job; then bob's
    # highest; then alice's and bob's others.
    claimed = [claim(database) for _ in range(4)]
    assert claimed == [high, higher, low, bobs]
    assert sorted(order, key=order.get) == claimed


def test_max_running_is_enforced_by_the_claim(database: Database) -> None:
    alice = make_key(database, "alice", max_running=1)
    bob = make_key(database, "bob")
    a1, a2 = submit(database, alice, 2)
    assert claim(database) == a1
    order = positions(database)
    assert order.positions == {} and order.held == {a2: 1}
    # Alice may queue more, but her second job does not start while her first runs.
    assert claim(database) is None
    (b1,) = submit(database, bob)
    assert claim(database) == b1
    assert claim(database) is None
    finish(database, a1)
    assert positions(database).positions == {a2: 1}
    assert claim(database) == a2


def test_concurrent_claims_keep_max_running_and_run_each_job_once(
    database: Database, settings
) -> None:
    alice = make_key(database, "alice", max_running=2)
    submit(database, alice, 10)
    bob = make_key(database, "bob")
    bobs = submit(database, bob, 6)
    claimed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker() -> None:
        # Each thread its own engine and connections, as a separate process would have.
        own = Database(settings.sqlalchemy_url)
        start.wait()
        while (job_id := claim(own)) is not None:
            with lock:
                claimed.append(job_id)
        own.dispose()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == len(set(claimed)) == 8  # alice's two, bob's six
    assert set(bobs) <= set(claimed)
    with database.session() as session:
        running = session.scalars(
            select(Job.id).where(Job.owner == alice, Job.state == JobState.running)
        ).all()
    assert len(running) == 2


def test_a_queued_jobs_view_shows_its_place_in_the_fair_order(database: Database) -> None:
    alice, bob = make_key(database, "alice", max_running=1), make_key(database, "bob")
    a1, a2, a3 = submit(database, alice, 3)
    (b1,) = submit(database, bob)
    assert claim(database) == a1
    with database.session() as session:
        views = {view.id: view for view in jobs.describe_page(
            session=session, jobs=[jobs.get_job(session=session, job_id=i) for i in (a2, a3, b1)])}
    assert views[b1].queue_position == 1
    assert views[a2].queue_position is None and views[a3].queue_position is None
    assert views[a2].note is not None and "max_running" in views[a2].note
    assert "quota is 1" in views[a2].note


def states(database: Database) -> dict[int, tuple[str, str | None, int]]:
    with database.session() as session:
        rows = session.execute(select(Job.id, Job.state, Job.worker_id, Job.lease_epoch))
        return {job_id: (state, worker, token) for job_id, state, worker, token in rows}


def test_a_claim_changes_one_job_only(database: Database) -> None:
    first, *others = submit(database, None, 4)
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w")
    assert lease == leases.Lease(job_id=first, worker_id="w", token=1)
    after = states(database)
    assert after[first] == (JobState.running, "w", 1)
    assert all(after[job] == (JobState.queued, None, 0) for job in others)


def test_a_step_written_twice_is_refused_alike_on_both_databases(database: Database) -> None:
    """PostgreSQL's rows go in by COPY, on the driver's own connection: its errors come out
    as SQLAlchemy's, as the rows' INSERT on SQLite does."""
    submit(database, None)
    lease = claim_lease(database)
    row = {"step": 0, "epoch": 0, "batch": 0, "loss": 1.0, "accuracy": 0.5, "time": 0.0}
    with database.session(write=True) as session:
        leases.record_progress(session=session, lease=lease, rows=[row])
    with pytest.raises(IntegrityError), database.session(write=True) as session:
        leases.record_progress(session=session, lease=lease, rows=[row])


def claim_lease(database: Database) -> leases.Lease:
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w")
    assert lease is not None
    return lease


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[Database]:
    """PostgreSQL alone: what these tests look at (other transactions holding rows, a server
    connection lost) has no counterpart with SQLite's single writer."""
    empty_postgres(postgres_url)
    database = Database(postgres_url)
    yield database
    database.dispose()


def test_a_claim_passes_over_a_job_another_transaction_holds(postgres: Database) -> None:
    alice, bob = make_key(postgres, "alice"), make_key(postgres, "bob")
    a1, a2 = submit(postgres, alice, 2)
    (b1,) = submit(postgres, bob)
    with postgres.session(write=True) as cancelling:  # as a cancel holds its job's row
        cancelling.execute(select(Job.id).where(Job.id == a1).with_for_update())
        # Alice's turn: her next job that no one holds; then bob's turn, whose job is free.
        assert claim(postgres) == a2
        assert claim(postgres) == b1
        # Only alice's held job is left, and it is passed over, not waited for.
        assert claim(postgres) is None
    assert claim(postgres) == a1
    assert all(state == JobState.running for state, _, _ in states(postgres).values())


def test_a_claim_on_a_connection_the_server_dropped_is_an_operational_error(
    postgres: Database,
) -> None:
    """The claim runs on the driver's connection (its lock, statement and commit sent at
    once): a lost server is still the OperationalError the worker waits out, the connection
    is discarded, and the next claim takes the job."""
    (job_id,) = submit(postgres, None)
    # A bare session on a connection whose backend is known, its transaction ended (so the
    # claim takes the one-trip path): the claim's own error is the one looked at.
    with postgres.engine.connect() as connection:
        backend = connection.scalar(select(func.pg_backend_pid()))
        connection.commit()
        with postgres.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            other.commit()
        with Session(bind=connection) as session, pytest.raises(OperationalError) as raised:
            leases.claim_job(session=session, worker_id="w")
    assert is_transient(raised.value) and raised.value.connection_invalidated
    assert states(postgres)[job_id] == (JobState.queued, None, 0)
    assert claim(postgres) == job_id


def test_a_claim_commits_at_once_and_what_follows_waits_for_the_disk(postgres: Database) -> None:
    """The claim's lock, statement and commit go to the server together, its commit not
    waiting for the disk; the caller's next statements are a new transaction, whose commit
    does wait, and so makes the claim durable with it."""
    (job_id,) = submit(postgres, None)
    with postgres.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w")
        assert lease is not None and lease.job_id == job_id
        assert states(postgres)[job_id] == (JobState.running, "w", 1)  # seen from elsewhere
        assert session.scalar(text("SHOW synchronous_commit")) == "on"
        leases.start_job(session=session, lease=lease, total_steps=10)
    with postgres.session() as session:
        assert session.scalar(select(Job.total_steps).where(Job.id == job_id)) == 10


def test_a_claim_after_other_writes_leaves_them_to_the_caller(postgres: Database) -> None:
    """Only a claim that opens its session's transaction commits it at once: after writes of
    the caller's own, the claim is part of the caller's transaction, and a rollback undoes
    both, as on SQLite."""
    first, second = submit(postgres, None, 2)
    with pytest.raises(RuntimeError), postgres.session(write=True) as session:
        session.execute(update(Job).where(Job.id == second).values(priority=5))
        lease = leases.claim_job(session=session, worker_id="w")
        assert lease is not None and lease.job_id == second  # it sees the caller's write
        raise RuntimeError("the caller fails after its claim")
    assert states(postgres)[first] == states(postgres)[second] == (JobState.queued, None, 0)
    with postgres.session() as session:
        assert session.scalar(select(Job.priority).where(Job.id == second)) == 0
