"""`tapefit serve` keeps its worker alive: SIGKILL the worker it started, and the next job
still trains, /readyz goes ready again, and a clean stop leaves no live worker's row."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select

from benchmarks.server import start_serve
from service.models import WorkerHeartbeat
from service.schemas import FINAL_STATES
from tests.helpers.settings import SAMPLE, TINY_SPEC

# A generous bound for the whole recovery (restart, TensorFlow loading, training a tiny job);
# it typically takes a few seconds.
RECOVERY_DEADLINE_S = 60


def children(pid: int) -> set[int]:
    """The child processes of `pid`, from /proc (every thread lists the children it forked)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return found


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate: Callable[[], object], timeout: float, what: str, log: Path) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n"
                         + log.read_text()[-4000:])


def test_a_killed_worker_is_restarted_and_the_next_job_succeeds(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(data_dir), "TAPEFIT_MNIST_PATH": str(SAMPLE),
           # Short leases, so that the dead worker's row expires within the test.
           "TAPEFIT_LEASE_TIMEOUT": "2", "TAPEFIT_HEARTBEAT_INTERVAL": "0.4"}
    env.pop("TAPEFIT_DATABASE_URL", None)
    env.pop("TAPEFIT_API_TOKEN", None)
    log = tmp_path / "serve.log"
    process, url = start_serve("--workers", "1", env=env, log_path=log)
    client = httpx.Client(base_url=url, timeout=10)
    try:
        def ready() -> bool:
            return client.get("/readyz").status_code == 200

        wait_until(ready, RECOVERY_DEADLINE_S, "the worker to be ready", log)
        (killed,) = children(process.pid)
        os.kill(killed, signal.SIGKILL)

        started = time.monotonic()
        job_id = client.post("/jobs", json=TINY_SPEC).json()["id"]

        def finished() -> dict | None:
            job = client.get(f"/jobs/{job_id}").json()
            return job if job["state"] in FINAL_STATES else None

        job = wait_until(finished, RECOVERY_DEADLINE_S, f"job {job_id}", log)
        assert isinstance(job, dict) and job["state"] == "succeeded", job
        print(f"kill -> next job succeeded: {time.monotonic() - started:.1f} s")

        def ready_with_the_new_worker_alone() -> bool:
            response = client.get("/readyz")
            return response.status_code == 200 and response.json()["workers_alive"] == 1

        wait_until(ready_with_the_new_worker_alone, RECOVERY_DEADLINE_S, "/readyz", log)
        (replacement,) = children(process.pid)
        assert replacement != killed and not is_zombie(killed)
        assert "was killed by SIGKILL" in log.read_text()
    finally:
        client.close()
        process.send_signal(signal.SIGINT)  # the API stops and takes its worker with it
        exit_code = process.wait(timeout=60)
    assert exit_code == 0, log.read_text()[-4000:]
    # The replacement stopped cleanly and removed its row; only the killed worker's remains.
    engine = create_engine(f"sqlite:///{data_dir}/tapefit.db")
    with engine.connect() as connection:
        left = set(connection.scalars(select(WorkerHeartbeat.id)))
    engine.dispose()
    assert left == {f"{socket.gethostname()}:{killed}"}
