"""The worker loop on a real SQLite file and the committed MNIST sample: claim, train,
record every batch, export, and end in the right state."""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.files import DiskFull
from service.migrate import upgrade
from service.queue import history, jobs, leases
from service.schemas import JobSpec, JobState
from tests.helpers.processes import wait_until
from tests.helpers.settings import SAMPLE, TINY_SPEC, make_settings
from worker.main import Worker
from worker.training import STEPS_PER_CALL


def run_once(settings: Settings) -> bool:
    """What one idle worker does: take the oldest queued job and run it."""
    with Worker(settings) as worker:
        return worker.run_once()


def submit(database: Database, spec: dict) -> int:
    with database.session(write=True) as session:
        return jobs.submit_job(session=session, spec=JobSpec.model_validate(spec)).id


def read(database: Database, job_id: int):
    with database.session() as session:
        job = jobs.get_job(session=session, job_id=job_id)
        page = history.metrics_page(session=session, job_id=job_id, after_step=-1, limit=10_000)
        return job, page.items, history.epoch_rows(session=session, job_id=job_id)


@pytest.mark.parametrize("implementation", ["keras", "naive"])
def test_a_job_runs_to_success_with_one_row_per_batch(
    settings: Settings, database: Database, implementation: str
) -> None:
    spec = {**TINY_SPEC, "epochs": 2, "batch_size": 48,
            "optimizer": {"name": "rmsprop", "learning_rate": 0.005},
            "model": {**TINY_SPEC["model"], "implementation": implementation}}
    job_id = submit(database, spec)
    assert run_once(settings) is True
    job, metrics, epochs = read(database, job_id)
    assert job.state == JobState.succeeded, job.error
    per_epoch = math.ceil(500 / 48)  # 11 batches, the last one of 20 images
    assert [m.step for m in metrics] == list(range(2 * per_epoch))
    assert [(m.epoch, m.batch) for m in metrics[per_epoch - 1 : per_epoch + 1]] == [
        (0, per_epoch - 1), (1, 0)
    ]
    assert all(m.loss is not None and m.loss > 0 for m in metrics)
    assert [e.epoch for e in epochs] == [0, 1]
    assert job.test_accuracy == pytest.approx(epochs[-1].test_accuracy)
    assert job.test_accuracy > 0.6  # well above chance (0.1) after 2 epochs of 500 images
    assert np.mean([m.loss for m in metrics[-4:]]) < np.mean([m.loss for m in metrics[:4]])
    assert (job.steps_done, job.total_steps, job.epoch) == (2 * per_epoch, 2 * per_epoch, 2)
    # The model is in the database, the one copy; the worker writes no model file.
    with database.session() as session:
        artifact = jobs.model_artifact(session=session, job_id=job_id)
        assert len(artifact.content) > 0
        assert artifact.sha256 == hashlib.sha256(artifact.content).hexdigest()
    assert not (settings.data_dir / "models").exists()
    assert run_once(settings) is False  # the queue is empty now


def test_predictions_come_from_the_exported_model(settings: Settings, database: Database) -> None:
    job_id = submit(database, {
        **TINY_SPEC, "epochs": 3, "dataset": {"train_limit": 2000},
        "optimizer": {"name": "rmsprop", "learning_rate": 0.003},
    })
    run_once(settings)
    sample = np.load(SAMPLE)
    images = sample["x_test"][:200].astype(np.float32) / 255
    with TestClient(create_app(settings)) as client:
        flat = client.post(
            f"/jobs/{job_id}/predict", json={"instances": images.reshape(-1, 784).tolist()}
        )
        grid = client.post(f"/jobs/{job_id}/predict", json={"instances": images[:3].tolist()})
        bad = [
            client.post(f"/jobs/{job_id}/predict", json=body)
            for body in (
                {"instances": [[0.5] * 783]},
                {"instances": [[1.5] + [0.0] * 783]},
                {"instances": []},
                {"instances": [[[0.0] * 28] * 27]},
                {"images": [[0.0] * 784]},
            )
        ]
    assert flat.status_code == 200
    predictions = flat.json()["predictions"]
    digits = np.array([p["digit"] for p in predictions])
    assert (digits == sample["y_test"][:200]).mean() > 0.8
    for p in predictions[:5]:
        assert len(p["probabilities"]) == 10
        assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert p["digit"] == int(np.argmax(p["probabilities"]))
    assert grid.json()["predictions"] == predictions[:3]
    assert [r.status_code for r in bad] == [422] * 5


def test_a_missing_data_file_fails_the_job_with_a_clear_message(
    tmp_path: Path, database: Database, settings: Settings
) -> None:
    job_id = submit(database, TINY_SPEC)
    broken = settings.model_copy(update={"mnist_path": tmp_path / "nowhere.npz"})
    assert run_once(broken) is True
    job, metrics, _ = read(database, job_id)
    assert job.state == JobState.failed
    assert "nowhere.npz" in job.error and "Traceback" not in job.error
    assert metrics == []
    # The worker goes on with the next job.
    next_id = submit(database, TINY_SPEC)
    run_once(settings)
    assert read(database, next_id)[0].state == JobState.succeeded


def test_a_diverging_job_fails_with_the_step(settings: Settings, database: Database) -> None:
    spec = {**TINY_SPEC, "epochs": 3, "batch_size": 10,
            "optimizer": {"name": "manual_sgd", "learning_rate": 10},
            "model": {"layers": [{"units": 256, "activation": "linear"},
                                 {"units": 10, "activation": "linear"}]}}
    job_id = submit(database, spec)
    run_once(settings)
    job, metrics, _ = read(database, job_id)
    assert job.state == JobState.failed
    assert job.error == f"diverged at step {metrics[-1].step}"
    assert metrics[-1].loss is None  # stored as null, not NaN


def test_a_cancel_stops_the_running_job_at_a_batch_boundary(
    settings: Settings, database: Database
) -> None:
    job_id = submit(database, {**TINY_SPEC, "epochs": 5, "batch_size": 10})
    with Worker(settings) as worker:
        with database.session(write=True) as session:
            lease = leases.claim_job(session=session, worker_id=worker.worker_id)
            jobs.cancel_job(session=session, job_id=job_id)
        worker.run_job(lease)
    job, metrics, _ = read(database, job_id)
    assert job.state == JobState.cancelled
    # The first write after the cancel (the first batch's) told the worker to stop, at the
    # end of the compiled call that batch was in.
    assert [m.step for m in metrics] == list(range(STEPS_PER_CALL))
    with database.session() as session:
        assert jobs.model_artifact(session=session, job_id=job_id) is None


def test_a_worker_shutting_down_checkpoints_and_the_job_resumes_cleanly_elsewhere(
    settings: Settings, database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = {**TINY_SPEC, "epochs": 2, "batch_size": 20}  # 25 batches an epoch
    job_id, same_spec = submit(database, spec), submit(database, spec)
    with Worker(settings) as worker:
        worker.stop.set()  # as after SIGTERM: finish the batch, checkpoint, hand the job back
        with database.session(write=True) as session:
            lease = leases.claim_job(session=session, worker_id=worker.worker_id)
        worker.run_job(lease)
    job, metrics, _ = read(database, job_id)
    # It stopped mid-epoch, at the end of its first compiled call of 16 batches.
    assert (job.state, job.attempts) == (JobState.queued, 0)
    assert [m.step for m in metrics] == list(range(STEPS_PER_CALL))
    with database.session() as session:
        checkpoint = leases.load_checkpoint(session=session, job_id=job_id)
        assert (checkpoint.step, checkpoint.lease_epoch) == (STEPS_PER_CALL, 1)

    # The next worker runs on another machine: nothing in common but the database.
    elsewhere = settings.model_copy(update={"data_dir": tmp_path / "other-machine",
                                            "database_url": settings.sqlalchemy_url})
    with caplog.at_level(logging.INFO, logger="tapefit.worker"):
        run_once(elsewhere)  # resumes job_id at step 16
    # From the checkpoint, not from scratch (which would draw the very same curve).
    assert f"job {job_id}: resuming at epoch 0, batch {STEPS_PER_CALL}" in caplog.text
    run_once(elsewhere)  # same_spec, uninterrupted
    job, metrics, epochs = read(database, job_id)
    _, uninterrupted, _ = read(database, same_spec)
    assert job.state == JobState.succeeded
    assert (job.attempts, job.lease_epoch) == (1, 2)
    assert [m.step for m in metrics] == list(range(50)) and [e.epoch for e in epochs] == [0, 1]
    np.testing.assert_allclose(
        [m.loss for m in metrics], [m.loss for m in uninterrupted], rtol=1e-5
    )
    with database.session() as session:  # a finished job keeps no checkpoint
        assert leases.load_checkpoint(session=session, job_id=job_id) is None


def test_a_locked_database_makes_the_worker_wait_not_die(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path / "data", sqlite_busy_timeout=0.1, heartbeat_interval=0.2)
    upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    job_id = submit(database, TINY_SPEC)
    # Another process's writer holds SQLite's write lock past the busy timeout.
    holder = sqlite3.connect(settings.data_dir / "tapefit.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run_forever)
    try:
        with caplog.at_level(logging.WARNING, logger="tapefit.worker"):
            thread.start()
            wait_until(lambda: "database unavailable" in caplog.text, 30, "the retry")
            assert thread.is_alive()
            assert read(database, job_id)[0].state == JobState.queued
            holder.execute("ROLLBACK")
            wait_until(lambda: read(database, job_id)[0].state == JobState.succeeded, 60,
                       "the job to run after the lock")
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        worker.stop.set()
        thread.join()
        worker.close()
        database.dispose()


def test_a_write_that_fails_mid_job_hands_it_back_and_it_finishes_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path / "data", heartbeat_interval=0.2)
    upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    per_epoch, epochs = 63, 4
    job_id = submit(database, {**TINY_SPEC, "epochs": epochs, "batch_size": 32,
                               "dataset": {"train_limit": 2000, "test_limit": 100}})
    worker = Worker(settings)
    # A database that fails one write and answers again at once: SQLite's lock cannot be
    # timed that finely from outside, so the 2nd group of loss rows (the first is written at
    # once, so any job this long has a second, however fast it runs) raises what SQLAlchemy
    # raises when the lock outlasts the busy timeout. Everything else is the real database.
    inserts = []

    @event.listens_for(worker.database.engine, "before_cursor_execute")
    def fail_once(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if statement.startswith("INSERT INTO metrics"):
            inserts.append(statement)
            if len(inserts) == 2:
                raise OperationalError(statement, parameters,
                                       sqlite3.OperationalError("database is locked"))

    thread = threading.Thread(target=worker.run_forever)
    try:
        with caplog.at_level(logging.INFO, logger="tapefit.worker"):
            thread.start()
            wait_until(lambda: JobState(read(database, job_id)[0].state).is_final, 60, "the end")
        job, metrics, epochs_done = read(database, job_id)
        # Not failed for the database's hiccup: handed back, resumed, one row per step.
        assert job.state == JobState.succeeded, job.error
        assert "a database write failed; handing the job back" in caplog.text
        assert caplog.text.count(": claimed") == 2
        assert [m.step for m in metrics] == list(range(epochs * per_epoch))
        assert [e.epoch for e in epochs_done] == list(range(epochs))
        assert thread.is_alive()
    finally:
        worker.stop.set()
        thread.join()
        worker.close()
        database.dispose()


def test_a_database_error_that_waiting_cannot_fix_stops_the_worker(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")  # never migrated: no tables
    settings.data_dir.mkdir(parents=True)
    with Worker(settings) as worker, pytest.raises(OperationalError, match="no such table"):
        worker.run_forever()


def run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    return thread


def test_a_full_disk_hands_the_job_back_and_the_worker_waits_for_space(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path / "data", heartbeat_interval=0.2)
    upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    per_epoch, epochs = 63, 4
    job_id = submit(database, {**TINY_SPEC, "epochs": epochs, "batch_size": 32,
                               "dataset": {"train_limit": 2000, "test_limit": 100}})
    worker = Worker(settings)
    full = threading.Event()

    # SQLite's own cap on the file's size, set to the size it has: a write that needs one
    # more page then fails with the very error a full disk gives (SQLITE_FULL, "database or
    # disk is full"), from SQLite itself, while the test keeps writing to its own database.
    @event.listens_for(worker.database.engine, "begin")
    def cap_the_file(conn) -> None:  # noqa: ANN001
        conn.exec_driver_sql(f"PRAGMA max_page_count = {1 if full.is_set() else 2**30}")

    states = []
    try:
        with caplog.at_level(logging.INFO, logger="tapefit.worker"):
            thread = run_in_thread(worker)
            wait_until(lambda: read(database, job_id)[0].steps_done > 0, 60, "the first rows")
            full.set()
            wait_until(lambda: "the disk is full; waiting for space" in caplog.text, 60,
                       "the worker to meet the full disk")
            # It waits (and retries) instead of dying, and the job is not failed for it.
            for retries in range(2, 5):
                states.append(read(database, job_id)[0].state)
                wait_until(lambda n=retries: caplog.text.count("waiting for space") >= n, 60,
                           "another retry")
            assert thread.is_alive()
            assert f"job {job_id}: the disk is full; handing the job back" in caplog.text
            full.clear()  # space is freed
            wait_until(lambda: JobState(read(database, job_id)[0].state).is_final, 60, "the end")
        job, metrics, epochs_done = read(database, job_id)
        assert set(states) <= {JobState.queued, JobState.running}
        assert (job.state, job.error) == (JobState.succeeded, None)
        assert [m.step for m in metrics] == list(range(epochs * per_epoch))
        assert [e.epoch for e in epochs_done] == list(range(epochs))
        assert thread.is_alive()
    finally:
        worker.stop.set()
        thread.join()
        worker.close()
        database.dispose()


def test_no_room_for_the_export_hands_the_job_back_not_fails_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path / "data", heartbeat_interval=0.2)
    upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    job_id = submit(database, TINY_SPEC)
    # The conversion meets a full disk once (an injected ENOSPC: the data dir is not on a
    # small filesystem here; tests/e2e/test_full_disk.py fills a real one).
    import tensorflow as tf

    convert = tf.lite.TFLiteConverter.convert
    failures = []

    def no_room_once(self) -> bytes:  # noqa: ANN001
        if not failures:
            failures.append(self)
            raise DiskFull(errno.ENOSPC, "no space left for the conversion's files")
        return convert(self)

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", no_room_once)
    running = Worker(settings)
    try:
        with caplog.at_level(logging.INFO, logger="tapefit.worker"):
            thread = run_in_thread(running)
            wait_until(lambda: JobState(read(database, job_id)[0].state).is_final, 60, "the end")
        job, metrics, _ = read(database, job_id)
        assert (job.state, job.error) == (JobState.succeeded, None)
        assert f"job {job_id}: the disk is full; handing the job back" in caplog.text
        assert caplog.text.count(": claimed") == 2 and failures
        assert [m.step for m in metrics] == list(range(job.total_steps))
        with database.session() as session:
            assert jobs.model_artifact(session=session, job_id=job_id) is not None
        assert list(running.scratch_dir.iterdir()) == []
        assert thread.is_alive()
    finally:
        running.stop.set()
        thread.join()
        running.close()
        database.dispose()


def test_an_unusable_checkpoint_makes_the_job_start_over_not_fail(
    settings: Settings, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = submit(database, TINY_SPEC)
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w1")
        leases.save_checkpoint(session=session, lease=lease, step=0, content=b"not a tar archive")
        leases.release_job(session=session, lease=lease)
    with caplog.at_level(logging.WARNING, logger="tapefit.worker"):
        assert run_once(settings)
    job, metrics, _ = read(database, job_id)
    assert job.state == JobState.succeeded, job.error
    assert f"job {job_id}: its checkpoint is unusable" in caplog.text
    assert [m.step for m in metrics] == list(range(job.total_steps))


def test_no_checkpoint_is_written_after_the_last_epoch(
    settings: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's end drops its checkpoint at once: the last epoch writes none (for a large
    model that was hundreds of MB written to be deleted)."""
    written: list[int] = []
    save = leases.save_checkpoint

    def counting(**kwargs: object) -> None:
        written.append(kwargs["step"])
        save(**kwargs)

    monkeypatch.setattr(leases, "save_checkpoint", counting)
    job_id = submit(database, {**TINY_SPEC, "epochs": 3})  # 5 batches an epoch
    assert run_once(settings)
    assert read(database, job_id)[0].state == JobState.succeeded
    assert written == [5, 10]  # after epochs 1 and 2, not after the third and last
