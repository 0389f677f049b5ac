"""Workers across machines: four `tapefit worker` processes share one PostgreSQL queue
(SELECT ... FOR UPDATE SKIP LOCKED) and no disk with the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.schemas import JobState
from tests.helpers.cluster import Cluster
from tests.helpers.settings import empty_postgres, make_settings

SMALL = {"epochs": 1, "batch_size": 50, "dataset": {"train_limit": 300, "test_limit": 100},
         "model": {"layers": [{"units": 16}, {"units": 10, "activation": "softmax"}]}}


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    empty_postgres(postgres_url)
    cluster = Cluster(tmp_path, database_url=postgres_url, lease_timeout=30)
    yield cluster
    cluster.close()


def test_four_workers_run_twenty_jobs_each_exactly_once(cluster: Cluster) -> None:
    for _ in range(4):
        cluster.start_worker()
    # All four idle on the queue before the jobs arrive, so the work can be shared.
    cluster.wait(lambda: all(" ready" in cluster.log(i) for i in range(4)), 120, "the workers")
    ids = [cluster.submit({**SMALL, "seed": n}) for n in range(20)]
    for job_id in ids:
        job = cluster.wait_final(job_id, timeout=180)
        assert job.state == JobState.succeeded, job.error
        # Claimed once, never requeued, every batch recorded once.
        assert (job.lease_epoch, job.attempts) == (1, 1)
        assert cluster.steps(job_id) == list(range(6))
    logs = [cluster.log(i) for i in range(4)]
    claims = sum(log.count(": claimed") for log in logs)
    assert claims == 20
    assert sum(1 for log in logs if ": claimed" in log) >= 2  # the work was shared

    # An API on "another machine": its own empty data dir, only the database in common.
    elsewhere = make_settings(cluster.tmp_path / "api-machine",
                              database_url=cluster.settings.sqlalchemy_url)
    with TestClient(create_app(elsewhere)) as api:
        response = api.post(f"/jobs/{ids[0]}/predict", json={"instances": [[0.0] * 784]})
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"][0]["probabilities"]) == 10
        assert api.get("/jobs/best/model").content[4:8] == b"TFL3"  # a TFLite flatbuffer


def test_a_killed_workers_job_resumes_on_another_machine(
    tmp_path: Path, postgres_url: str
) -> None:
    empty_postgres(postgres_url)
    cluster = Cluster(tmp_path, database_url=postgres_url, lease_timeout=2.0)
    # 63 batches an epoch, 40 epochs: far longer than the wait for epoch 2 (see test_recovery).
    spec = {"epochs": 40, "batch_size": 32, "dataset": {"train_limit": 2000, "test_limit": 200},
            "model": {"layers": [{"units": 64}, {"units": 10, "activation": "softmax"}]}}
    try:
        job_id = cluster.submit(spec)
        first = cluster.start_worker(data_dir=tmp_path / "machine-a")
        cluster.wait(lambda: cluster.job(job_id).steps_done >= 63 + 10, 120, "epoch 2")
        first.kill()
        first.wait()
        # Another machine: its own disk, the database in common. It sweeps the dead worker's
        # job once the 2 s lease times out, and resumes it from the checkpoint.
        cluster.start_worker(data_dir=tmp_path / "machine-b")
        job = cluster.wait_final(job_id, timeout=180)
        assert job.state == JobState.succeeded, job.error
        assert cluster.steps(job_id) == list(range(40 * 63))
        assert "resuming at epoch" in cluster.log(1)
    finally:
        cluster.close()
