"""Crash recovery with real `tapefit worker` processes on one SQLite file: SIGKILL, SIGSTOP,
SIGTERM, and a job that kills its worker every time. Leases are shortened through settings."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.schemas import JobState
from tests.helpers.cluster import Cluster

# 63 batches an epoch, 40 epochs. The tests stop the worker early in epoch 2, but what they
# read lags the worker by up to a flush interval (hundreds of batches at ~1,400 batches/s):
# the job must outlast that lag by far, or it can finish before the signal lands.
EPOCHS = 40
SPEC = {"epochs": EPOCHS, "batch_size": 32,
        "dataset": {"train_limit": 2000, "test_limit": 500},
        "model": {"layers": [{"units": 64, "activation": "relu"},
                             {"units": 10, "activation": "softmax"}]}}
PER_EPOCH = math.ceil(2000 / 32)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.close()


def test_a_killed_workers_job_resumes_on_another_and_keeps_a_clean_curve(
    cluster: Cluster,
) -> None:
    job_id = cluster.submit(SPEC)
    first = cluster.start_worker()
    # Past the first epoch's checkpoint, in the middle of the second epoch.
    cluster.wait(lambda: cluster.job(job_id).steps_done >= PER_EPOCH + 10, 60, "epoch 2")
    first.kill()
    first.wait()
    killed_at = cluster.job(job_id).steps_done
    cluster.start_worker()
    job = cluster.wait_final(job_id)
    assert job.state == JobState.succeeded, job.error
    assert cluster.steps(job_id) == list(range(EPOCHS * PER_EPOCH))
    assert job.lease_epoch == 2 and job.attempts == 2
    # Resumed from a checkpoint, not from scratch (where depends on when the kill landed).
    assert "resuming at epoch" in cluster.log(1)
    assert killed_at > PER_EPOCH
    # The same spec without interruption, on the worker still running.
    reference = cluster.wait_final(cluster.submit(SPEC))
    assert job.test_accuracy == pytest.approx(reference.test_accuracy, abs=0.01)


def test_a_paused_worker_that_lost_its_lease_changes_nothing(cluster: Cluster) -> None:
    job_id = cluster.submit(SPEC)
    paused = cluster.start_worker()
    cluster.wait(lambda: cluster.job(job_id).steps_done >= PER_EPOCH + 5, 60, "epoch 2")
    cluster.pause(paused)
    cluster.start_worker()
    # The second worker sweeps the job after the lease timeout and takes it over.
    cluster.wait(lambda: cluster.job(job_id).lease_epoch == 2, 30, "the takeover")
    paused.send_signal(signal.SIGCONT)
    cluster.wait(lambda: "no longer held" in cluster.log(0) or "lease lost" in cluster.log(0),
                 10, "the paused worker to notice")
    # Now idle, it could legitimately win the job back if the new holder ever stalled.
    paused.kill()
    job = cluster.wait_final(job_id)
    assert job.state == JobState.succeeded, job.error
    assert job.worker_id is None or job.worker_id.endswith(f":{cluster.processes[1].pid}")
    assert cluster.steps(job_id) == list(range(EPOCHS * PER_EPOCH))


def test_a_job_whose_worker_dies_every_time_fails_after_three_attempts(
    cluster: Cluster,
) -> None:
    job_id = cluster.submit(SPEC)
    for attempt in (1, 2, 3):
        worker = cluster.start_worker()
        cluster.wait(lambda a=attempt: cluster.job(job_id).lease_epoch == a, 60,
                     f"claim {attempt}")
        worker.kill()
        worker.wait()
    cluster.start_worker()  # sweeps the third loss and gives up on the job
    job = cluster.wait_final(job_id, timeout=30)
    assert job.state == JobState.failed
    assert "lost 3 times" in job.error
    assert job.attempts == 3


def test_sigterm_checkpoints_hands_back_and_the_job_finishes_cleanly(cluster: Cluster) -> None:
    job_id = cluster.submit(SPEC)
    worker = cluster.start_worker()
    cluster.wait(lambda: cluster.job(job_id).steps_done >= PER_EPOCH + 20, 60, "epoch 2")
    worker.terminate()
    assert worker.wait(timeout=30) == 0
    job = cluster.job(job_id)
    assert (job.state, job.attempts) == (JobState.queued, 0)
    assert job.steps_done > PER_EPOCH + 20
    cluster.start_worker()
    job = cluster.wait_final(job_id)
    assert job.state == JobState.succeeded, job.error
    assert cluster.steps(job_id) == list(range(EPOCHS * PER_EPOCH))
    assert "resuming at epoch" in cluster.log(1)
