"""The queue and the job state machine, on a real migrated SQLite file."""

from __future__ import annotations

import math
import threading

import pytest
from sqlalchemy import func, select

from service.db import Database
from service.models import Metric
from service.queue import history, jobs, leases
from service.queue.jobs import JobConflict
from service.queue.leases import Lease, LeaseLost
from service.schemas import EpochRead, JobSpec, JobState


def submit(database: Database, n: int = 1) -> list[int]:
    with database.session(write=True) as session:
        return [jobs.submit_job(session=session, spec=JobSpec()).id for _ in range(n)]


def claim(database: Database, worker: str = "w1") -> Lease | None:
    with database.session(write=True) as session:
        return leases.claim_job(session=session, worker_id=worker)


def state_of(database: Database, job_id: int) -> str:
    with database.session() as session:
        return jobs.get_job(session=session, job_id=job_id).state


def row(step: int, loss: float = 1.0) -> dict:
    return {"step": step, "epoch": 0, "batch": step, "loss": loss, "accuracy": 0.5, "time": 0.1}


def test_claim_takes_the_oldest_queued_job_and_none_when_empty(database: Database) -> None:
    first, second = submit(database, 2)
    lease = claim(database)
    assert lease == Lease(job_id=first, worker_id="w1", token=1)
    assert state_of(database, first) == JobState.running
    assert claim(database).job_id == second
    assert claim(database) is None


def test_concurrent_claims_never_share_a_job(database: Database, settings) -> None:
    ids = submit(database, 30)
    claimed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker(name: str) -> None:
        # Each thread has its own engine and connections, like a separate process would.
        own = Database(settings.sqlalchemy_url)
        start.wait()
        while (lease := claim(own, name)) is not None:
            with lock:
                claimed.append(lease.job_id)
        own.dispose()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == ids


def test_progress_is_written_in_groups_and_nan_is_stored_as_null(database: Database) -> None:
    (job_id,) = submit(database)
    lease = claim(database)
    with database.session(write=True) as session:
        leases.start_job(session=session, lease=lease, total_steps=4)
        cancel = leases.record_progress(
            session=session, lease=lease, rows=[row(0, 2.0), row(1, math.nan)]
        )
    assert cancel is False
    with database.session() as session:
        job = jobs.get_job(session=session, job_id=job_id)
        page = history.metrics_page(session=session, job_id=job_id, after_step=-1, limit=10)
    assert (job.steps_done, job.total_steps) == (2, 4)
    assert jobs.describe(job).progress.fraction == 0.5
    assert [(m.step, m.loss) for m in page.items] == [(0, 2.0), (1, None)]
    assert jobs.describe(job).loss is None


def test_a_cancel_reaches_the_running_worker_through_its_next_write(database: Database) -> None:
    (job_id,) = submit(database)
    lease = claim(database)
    with database.session(write=True) as session:
        job = jobs.cancel_job(session=session, job_id=job_id)
        assert (job.state, job.cancel_requested) == (JobState.running, True)
    with database.session(write=True) as session:
        assert leases.record_progress(session=session, lease=lease, rows=[row(0)])
        leases.mark_cancelled(session=session, lease=lease)
    assert state_of(database, job_id) == JobState.cancelled


@pytest.mark.parametrize("end", ["finish", "fail", "cancel"])
def test_final_states_cannot_be_cancelled(database: Database, end: str) -> None:
    (job_id,) = submit(database)
    lease = claim(database)
    with database.session(write=True) as session:
        if end == "finish":
            leases.finish_job(
                session=session, lease=lease, test_loss=0.1, test_accuracy=0.9, model=b"m"
            )
        elif end == "fail":
            leases.fail_job(session=session, lease=lease, error="boom")
        else:
            leases.mark_cancelled(session=session, lease=lease)
    with database.session(write=True) as session, pytest.raises(JobConflict):
        jobs.cancel_job(session=session, job_id=job_id)


def test_a_released_job_is_queued_again_without_using_an_attempt(database: Database) -> None:
    (job_id,) = submit(database)
    lease = claim(database)
    with database.session(write=True) as session:
        leases.record_progress(session=session, lease=lease, rows=[row(0), row(1)])
        leases.release_job(session=session, lease=lease)
    with database.session() as session:
        job = jobs.get_job(session=session, job_id=job_id)
        # The history stays for the next worker to rewind to its checkpoint.
        assert (job.state, job.steps_done, job.worker_id, job.attempts) == (
            JobState.queued, 2, None, 0
        )
    assert claim(database, "w2").token == 2


def test_a_resumed_start_drops_the_history_after_its_checkpoint(database: Database) -> None:
    (job_id,) = submit(database)
    lease = claim(database)
    with database.session(write=True) as session:
        leases.record_progress(
            session=session, lease=lease, rows=[row(s, s + 1.0) for s in range(6)]
        )
        for epoch in (0, 1):
            leases.record_epoch(
                session=session,
                lease=lease,
                summary=EpochRead(
                    epoch=epoch, train_loss=1, train_accuracy=0.5, test_loss=1,
                    test_accuracy=0.5, seconds=1,
                ),
            )
        leases.start_job(session=session, lease=lease, total_steps=9, step=4, epoch=1)
    with database.session() as session:
        job = jobs.get_job(session=session, job_id=job_id)
        page = history.metrics_page(session=session, job_id=job_id, after_step=-1, limit=10)
        assert [m.step for m in page.items] == [0, 1, 2, 3]
        assert [e.epoch for e in history.epoch_rows(session=session, job_id=job_id)] == [0]
        assert (job.steps_done, job.epoch, job.loss) == (4, 1, 4.0)


def test_stalled_jobs_are_requeued_then_failed_after_max_attempts(database: Database) -> None:
    (job_id,) = submit(database)
    for attempt in (1, 2, 3):
        lease = claim(database, f"w{attempt}")
        save(database, lease, attempt, b"state")
        with database.session(write=True) as session:
            # A heartbeat within the timeout keeps the job; none for 0 s loses it.
            leases.heartbeat(session=session, lease=lease)
            assert leases.requeue_stalled(session=session, lease_timeout=60, max_attempts=3) == []
            moved = leases.requeue_stalled(session=session, lease_timeout=0, max_attempts=3)
        expected = JobState.queued if attempt < 3 else JobState.failed
        assert moved == [(job_id, expected)]
        with pytest.raises(LeaseLost), database.session(write=True) as session:
            leases.heartbeat(session=session, lease=lease)
    with database.session() as session:
        job = jobs.get_job(session=session, job_id=job_id)
    assert job.state == JobState.failed
    assert "lost 3 times" in job.error and job.finished_at is not None
    assert checkpoint_of(database, job_id) is None  # it never resumes now
    assert claim(database) is None


def test_a_worker_that_lost_its_lease_changes_nothing(database: Database) -> None:
    (job_id,) = submit(database)
    stale = claim(database, "w1")
    with database.session(write=True) as session:
        leases.requeue_stalled(session=session, lease_timeout=0, max_attempts=3)
    current = claim(database, "w2")
    for change in (
        lambda s: leases.record_progress(session=s, lease=stale, rows=[row(0)]),
        lambda s: leases.finish_job(
            session=s, lease=stale, test_loss=0.0, test_accuracy=1.0, model=b"late"
        ),
        lambda s: leases.fail_job(session=s, lease=stale, error="late"),
        lambda s: leases.save_checkpoint(session=s, lease=stale, step=0, content=b"late"),
    ):
        with pytest.raises(LeaseLost), database.session(write=True) as session:
            change(session)
    with database.session() as session:
        job = jobs.get_job(session=session, job_id=job_id)
        assert (job.state, job.worker_id, job.error) == (JobState.running, "w2", None)
        assert session.scalar(select(func.count()).select_from(Metric)) == 0
        assert leases.load_checkpoint(session=session, job_id=job_id) is None
    assert current.token == 2


def checkpoint_of(database: Database, job_id: int) -> tuple[int, int, bytes] | None:
    with database.session() as session:
        found = leases.load_checkpoint(session=session, job_id=job_id)
        return None if found is None else (found.step, found.lease_epoch, found.content)


def save(database: Database, lease: Lease, step: int, content: bytes) -> None:
    with database.session(write=True) as session:
        leases.save_checkpoint(session=session, lease=lease, step=step, content=content)


def test_a_checkpoint_is_replaced_by_the_holder_and_dropped_when_the_job_ends(
    database: Database,
) -> None:
    first, second, third, fourth = submit(database, 4)
    lease = claim(database)
    save(database, lease, 10, b"epoch 1")
    save(database, lease, 20, b"epoch 2")
    assert checkpoint_of(database, first) == (20, 1, b"epoch 2")
    with database.session(write=True) as session:
        leases.release_job(session=session, lease=lease)  # a hand-back keeps it for the resume
    assert checkpoint_of(database, first) == (20, 1, b"epoch 2")
    lease = claim(database, "w2")
    save(database, lease, 30, b"epoch 3")
    assert checkpoint_of(database, first) == (30, 2, b"epoch 3")
    with database.session(write=True) as session:
        leases.finish_job(session=session, lease=lease, test_loss=0.1, test_accuracy=0.9,
                        model=b"tflite")
    assert checkpoint_of(database, first) is None

    # Every other way to a final state drops it too.
    for job_id, end in ((second, "fail"), (third, "cancel"), (fourth, "release and cancel")):
        lease = claim(database)
        save(database, lease, 5, b"state")
        with database.session(write=True) as session:
            if end == "fail":
                leases.fail_job(session=session, lease=lease, error="boom")
            elif end == "cancel":
                leases.mark_cancelled(session=session, lease=lease)
            else:
                leases.release_job(session=session, lease=lease)
                jobs.cancel_job(session=session, job_id=job_id)  # queued: cancelled at once
        assert checkpoint_of(database, job_id) is None, end


def test_list_is_newest_first_filtered_and_paginated(database: Database) -> None:
    ids = submit(database, 5)
    claim(database)  # the oldest becomes running
    with database.session() as session:
        page, total = jobs.list_jobs(session=session, state=None, limit=2, offset=1)
        assert [job.id for job in page] == [ids[3], ids[2]] and total == 5
        queued, total = jobs.list_jobs(session=session, state=JobState.queued, limit=10, offset=0)
        assert [job.id for job in queued] == ids[:0:-1] and total == 4


def test_a_spec_stored_before_a_field_existed_means_the_same_job(database: Database) -> None:
    """Old job specs keep their meaning: a stored spec without `shuffle` is a shuffled job,
    and a retry of its submission with today's spec is recognised as the same job."""
    with database.session(write=True) as session:
        job = jobs.submit_job(session=session, spec=JobSpec(), idempotency_key="old-client")
        stored = dict(job.spec)
        del stored["shuffle"]  # as a job written by an earlier version
        job.spec = stored
    with database.session(write=True) as session:
        assert JobSpec.model_validate(jobs.get_job(session=session, job_id=job.id).spec).shuffle
        again = jobs.submit_job(session=session, spec=JobSpec(), idempotency_key="old-client")
        assert again.id == job.id
        with pytest.raises(JobConflict):
            jobs.submit_job(session=session, spec=JobSpec(shuffle=False),
                            idempotency_key="old-client")


def test_a_cancel_racing_a_claim_asks_the_worker_instead_of_ending_a_running_job(
    postgres_url: str,
) -> None:
    """PostgreSQL: the cancel read the job queued, then a worker claimed it before the cancel
    wrote. The job is running, so the cancel becomes a request its worker will see; it must
    not mark a running job cancelled under its worker. (SQLite's writers cannot interleave.)"""
    from tests.helpers.settings import empty_postgres

    empty_postgres(postgres_url)
    database = Database(postgres_url)
    try:
        (job_id,) = submit(database)
        with database.session(write=True) as cancelling:
            jobs.get_job(session=cancelling, job_id=job_id)  # seen queued
            lease = claim(database)  # another transaction claims it and commits
            assert lease is not None and lease.job_id == job_id
            job = jobs.cancel_job(session=cancelling, job_id=job_id)
            assert (job.state, job.cancel_requested) == (JobState.running, True)
        assert state_of(database, job_id) == JobState.running
    finally:
        database.dispose()
