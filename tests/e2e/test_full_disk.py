"""A full disk: answered 507 (never 500), waited out by the worker, and no job lost.

The end-to-end test puts the data dir on a real 30 MB filesystem (a tmpfs, which needs root
to mount), runs the real `tapefit serve` and `tapefit worker` on it, and fills it until
SQLite's writes fail. The tests after it check how each database's own disk-full error is
recognised and answered.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from benchmarks.server import start_serve
from service.api.app import create_app
from service.db import is_disk_full, is_transient
from service.files import DiskFull, owned_folder, write_atomically
from tests.helpers.processes import TAPEFIT, wait_until
from tests.helpers.settings import SAMPLE, TINY_SPEC, empty_postgres, make_settings

SCRATCH_PREFIX = "tflite-"  # worker.export's; not imported, so this file loads no TensorFlow
# Long enough (25,000 steps, ~7 s here) to still be training when the disk fills a moment
# after its first rows (~0.5 s), so the worker is busy and the jobs behind it stay queued.
LONG_SPEC = {**TINY_SPEC, "epochs": 50, "batch_size": 1}


@contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path`, unmounted after."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(path: Path) -> None:
    """Write zeros to `path` until its filesystem has no byte left."""
    with path.open("wb", buffering=0) as file:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096, b"\0"):
            try:
                while True:
                    file.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem (tmpfs) needs root")
def test_a_full_disk_is_507_the_worker_waits_and_every_job_runs_once_there_is_room(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = {
        **os.environ,
        "TAPEFIT_DATA_DIR": str(data),
        "TAPEFIT_MNIST_PATH": str(SAMPLE),
        "TAPEFIT_LEASE_TIMEOUT": "2",
        "TAPEFIT_HEARTBEAT_INTERVAL": "0.4",
        "TAPEFIT_POLL_INTERVAL": "0.1",
        "TAPEFIT_FLUSH_INTERVAL": "0.2",
    }
    env.pop("TAPEFIT_DATABASE_URL", None)
    answers: list[int] = []
    with small_filesystem(data, "30m"), owned_folder(data / "tmp", prefix=SCRATCH_PREFIX) as live:
        # What a worker killed mid-conversion leaves: its SavedModel, its lock free.
        killed = data / "tmp" / f"{SCRATCH_PREFIX}killed"
        killed.mkdir()
        (killed / ".lock").touch()
        (killed / "saved_model.pb").write_bytes(b"\0" * (1 << 20))
        server, url = start_serve("--workers", "0", env=env, log_path=tmp_path / "serve.log")
        worker_log = tmp_path / "worker.log"
        with worker_log.open("w") as log:
            worker = subprocess.Popen([TAPEFIT, "worker"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
        client = httpx.Client(base_url=url, timeout=30)

        def post(path: str, **kwargs: object) -> httpx.Response:
            response = client.post(path, **kwargs)
            answers.append(response.status_code)
            return response

        def job(job_id: int) -> dict:
            return client.get(f"/jobs/{job_id}").json()

        try:
            wait_until(lambda: " ready" in worker_log.read_text(), 120, "the worker")
            # At its start the worker swept the dead one's folder, and kept the live one's.
            assert not killed.exists() and live.exists()

            long_id = post("/jobs", json=LONG_SPEC).json()["id"]
            wait_until(lambda: job(long_id)["progress"]["step"] > 0, 60, "the long job to train")
            queued_id = post("/jobs", json=TINY_SPEC).json()["id"]
            to_cancel = post("/jobs", json=TINY_SPEC).json()["id"]
            # Move the WAL into the database file, so that every write from here on has to
            # grow the WAL, and fill the disk.
            with closing(sqlite3.connect(data / "tapefit.db", timeout=30)) as db:
                busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0
            fill(data / "filler")
            assert job(long_id)["state"] == "running"  # still training: the premise holds

            # The API: 507 saying the disk is full, for a new job and for a cancel alike.
            refused = post("/jobs", json=TINY_SPEC)
            cancel = post(f"/jobs/{to_cancel}/cancel")
            for response in (refused, cancel):
                assert response.status_code == 507, response.text
                assert "disk is full" in response.json()["detail"]
            assert "the disk is full" in (tmp_path / "serve.log").read_text()
            with pytest.raises(DiskFull):  # the API's model cache meets it the same way
                write_atomically(data / "models" / "x" / "model.tflite", b"\0" * 100_000)
            assert list((data / "models" / "x").iterdir()) == []

            # The worker: handed its job back (or tried to), and waits for space, alive.
            wait_until(lambda: worker_log.read_text().count("waiting for space") >= 3, 60,
                       "the worker to retry")
            assert "the disk is full; handing the job back" in worker_log.read_text()
            assert worker.poll() is None
            assert client.get("/healthz").status_code == 200  # liveness, as documented
            states = {i: job(i)["state"] for i in (long_id, queued_id, to_cancel)}
            assert states[long_id] in ("running", "queued") and states[queued_id] == "queued"
            assert states[to_cancel] == "queued"  # the refused cancel changed nothing

            (data / "filler").unlink()  # space is freed
            assert post(f"/jobs/{to_cancel}/cancel").json()["state"] == "cancelled"
            wait_until(lambda: job(queued_id)["state"] == "succeeded", 120,
                       "the queued job to run")
            wait_until(lambda: job(long_id)["state"] not in ("queued", "running"), 120,
                       "the long job to finish")
            long_job = job(long_id)
            assert (long_job["state"], long_job["error"]) == ("succeeded", None)
            assert worker.poll() is None  # the same process, all along
            with closing(sqlite3.connect(data / "tapefit.db")) as db:
                assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                steps = db.execute("SELECT step FROM metrics WHERE job_id = ? ORDER BY step",
                                   (long_id,)).fetchall()
            # Every step's row exactly once, though writes failed and the job moved twice.
            assert [step for (step,) in steps] == list(range(long_job["progress"]["total_steps"]))
        finally:
            client.close()
            stop(worker)
            stop(server)
    assert 500 not in answers and 507 in answers


def full_disk_error(url: str) -> OperationalError:
    """The error the database itself gives for a full disk, as SQLAlchemy raises it."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "sqlite":
                # SQLite's cap on the file's size, at its size: a write that needs another
                # page fails with SQLITE_FULL, "database or disk is full", as on a full disk.
                connection.execute(text("CREATE TABLE filler (x BLOB)"))
                connection.execute(text("PRAGMA max_page_count = 1"))
                connection.execute(text("INSERT INTO filler VALUES (zeroblob(100000))"))
            else:
                # A real PostgreSQL error with the SQLSTATE a full disk raises (53100,
                # disk_full), raised by the server; filling the server's own disk is not
                # something a test can do to a shared server.
                connection.execute(text(
                    "DO $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on "
                    "device' USING ERRCODE = 'disk_full'; END $$"))
    except OperationalError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("the write did not fail")


def test_each_databases_disk_full_error_is_recognised(tmp_path: Path, postgres_url: str) -> None:
    for url in (f"sqlite:///{tmp_path / 'small.db'}", postgres_url):
        exc = full_disk_error(url)
        assert is_disk_full(exc) and not is_transient(exc), (url, exc)
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # Not a full disk: a refused connection (waiting fixes it), a missing file, a lock.
    refused = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with pytest.raises(OperationalError) as unreachable:
        refused.connect()
    assert is_transient(unreachable.value) and not is_disk_full(unreachable.value)
    assert not is_disk_full(FileNotFoundError(errno.ENOENT, "No such file"))
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    assert is_transient(locked) and not is_disk_full(locked)


DISK_FULL_TRIGGER = """
CREATE FUNCTION tapefit_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';
END $$;
CREATE TRIGGER tapefit_test_disk_full BEFORE INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION tapefit_test_disk_full();
"""


def test_postgresql_out_of_disk_is_507_not_500(tmp_path: Path, postgres_url: str) -> None:
    empty_postgres(postgres_url)
    engine = create_engine(postgres_url)
    with TestClient(create_app(make_settings(tmp_path / "data", database_url=postgres_url))
                    ) as client:
        job_id = client.post("/jobs", json=TINY_SPEC).json()["id"]
        # From here on, the server refuses every write to the jobs table as a full disk does.
        with engine.begin() as connection:
            connection.execute(text(DISK_FULL_TRIGGER))
        try:
            refused = [client.post("/jobs", json=TINY_SPEC),
                       client.post(f"/jobs/{job_id}/cancel")]
        finally:
            with engine.begin() as connection:
                connection.execute(text("DROP TRIGGER tapefit_test_disk_full ON jobs; "
                                        "DROP FUNCTION tapefit_test_disk_full()"))
            engine.dispose()
        for response in refused:
            assert response.status_code == 507, response.text
            assert "disk is full" in response.json()["detail"]
        assert client.get(f"/jobs/{job_id}").json()["state"] == "queued"
        assert client.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"
