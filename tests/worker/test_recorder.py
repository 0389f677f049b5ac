"""The job's recorder on a real database: rows go in groups, but a run's first row at once."""

from __future__ import annotations

import threading

from service.db import Database
from service.queue import history, jobs, leases
from service.schemas import JobSpec
from worker.recorder import Heartbeat, JobRecorder


def rows_written(database: Database, job_id: int) -> list[int]:
    with database.session() as session:
        page = history.metrics_page(session=session, job_id=job_id, after_step=-1, limit=100)
        return [row.step for row in page.items]


def test_a_runs_first_row_is_written_at_once_then_rows_go_in_groups(database: Database) -> None:
    with database.session(write=True) as session:
        job_id = jobs.submit_job(session=session, spec=JobSpec()).id
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w")
    assert lease is not None and lease.job_id == job_id
    with Heartbeat(database, lease, interval=5.0) as heartbeat:
        recorder = JobRecorder(database, lease, flush_rows=10, flush_interval=3600,
                               stop=threading.Event(), heartbeat=heartbeat)
        # As the worker does: the start's write, then the first batch at once after it.
        recorder.record(leases.start_job, total_steps=100, step=0, epoch=0)
        row = {"epoch": 0, "loss": 1.0, "accuracy": 0.5}
        recorder.on_batch(step=0, batch=0, **row)
        assert rows_written(database, job_id) == [0]  # someone watching sees it now
        for step in range(1, 10):
            recorder.on_batch(step=step, batch=step, **row)
        assert rows_written(database, job_id) == [0]  # the next ones wait for a group
        recorder.on_batch(step=10, batch=10, **row)
        assert rows_written(database, job_id) == list(range(11))
