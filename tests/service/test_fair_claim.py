"""Fair claiming between API keys, priorities within a key, max_running in the claim, and
queue positions that tell the claim order, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from sqlalchemy import select, update

from service.db import Database
from service.models import Job
from service.queue import jobs, leases
from service.schemas import JobSpec, JobState
from service.tenancy import keys
from service.tenancy.identity import Scope


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
