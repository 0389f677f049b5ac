"""`tapefit bench queue`: the real queue code under simulated workers, on SQLite and on
PostgreSQL, at a tiny size. Its speed is the benchmark's business (see the README), never
asserted here; what is asserted is its shape and that it loses and repeats nothing."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from sqlalchemy import func, select

from benchmarks.queue import QueueBench, _Tally
from service.config import Settings
from service.db import Database
from service.models import Job, Metric
from service.queue import jobs, leases
from service.schemas import JobSpec
from tests.helpers.processes import TAPEFIT

FIGURES = {"workers", "jobs", "rows_per_second", "claim_p50_ms", "claim_p99_ms",
           "heartbeat_p99_ms", "duplicates", "lost"}


@pytest.mark.slow  # real processes
@pytest.mark.parametrize(("processes", "step_ms"), [(1, 0), (2, 1)])
def test_it_prints_one_json_line_and_loses_nothing(
    settings: Settings, database: Database, processes: int, step_ms: int
) -> None:
    env = {**os.environ, "TAPEFIT_DATABASE_URL": settings.sqlalchemy_url,
           "TAPEFIT_DATA_DIR": str(settings.data_dir)}
    result = subprocess.run(
        [TAPEFIT, "bench", "queue", "--simulated-workers", "4", "--seconds", "2",
         "--processes", str(processes), "--step-ms", str(step_ms), "--heartbeat-interval",
         "0.2", "--json"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = result.stdout.splitlines()
    figures = json.loads(line)
    assert FIGURES <= figures.keys()
    assert figures["workers"] == 4 and figures["processes"] == processes
    assert figures["database"] == database.engine.dialect.name
    assert figures["duplicates"] == figures["lost"] == figures["errors"] == 0
    assert figures["jobs"] > 0 and figures["claims"] >= figures["jobs"]
    assert figures["rows"] >= figures["jobs"] * 469 // 2 and figures["rows_per_second"] > 0
    assert figures["rows_per_second_in_run"] > 0
    # Paced, what 4 workers asked: one row a millisecond each.
    assert figures["asked_rows_per_second"] == (4000 if step_ms else None)
    assert 0 < figures["claim_p50_ms"] <= figures["claim_p99_ms"]
    assert figures["heartbeat_p99_ms"] > 0
    # It ran on a scratch database: the configured one is as it was.
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_stale_or_missing_row_is_counted(settings: Settings, database: Database) -> None:
    """The read-back finds what the fencing or the writes got wrong: a row written under a
    lease that is not the job's last is a duplicate (and the row it replaced is lost), an
    acknowledged step with no row is lost."""
    bench = QueueBench(settings.sqlalchemy_url, workers=1, seconds=1, settings=settings)
    with database.session(write=True) as session:
        jobs.submit_job(session=session, spec=JobSpec())
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w")
    assert lease is not None

    def row(step: int, token: int) -> dict[str, float | int]:
        return {"step": step, "epoch": 0, "batch": step, "loss": token + step * 1e-7,
                "accuracy": 0.5, "time": 0.0}

    with database.session(write=True) as session:
        leases.record_progress(session=session, lease=lease,
                               rows=[row(0, lease.token), row(1, lease.token), row(2, 99)])
    tally = _Tally(acknowledged={lease.job_id: (lease.token, 4)})
    # Step 2 is another lease's (a duplicate, and the real step 2 is lost); step 3 is lost.
    assert bench._read_back([tally]) == (1, 2)
    with database.session(write=True) as session:
        session.execute(Metric.__table__.delete().where(Metric.step == 2))
        leases.record_progress(session=session, lease=lease,
                               rows=[row(2, lease.token), row(3, lease.token)])
    assert bench._read_back([tally]) == (0, 0)
    bench.database.dispose()
