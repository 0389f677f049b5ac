"""Worker processes for end-to-end tests: real `tapefit worker`s sharing one database."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from service.db import Database
from service.migrate import upgrade
from service.models import Job
from service.queue import history, jobs
from service.schemas import JobSpec, JobState
from tests.helpers.processes import TAPEFIT
from tests.helpers.settings import SAMPLE, make_settings


class Cluster:
    """Worker processes sharing one data dir, and a view of the database."""

    def __init__(
        self, tmp_path: Path, *, database_url: str | None = None, lease_timeout: float = 2.0
    ) -> None:
        self.tmp_path = tmp_path
        self.settings = make_settings(tmp_path / "data", database_url=database_url)
        upgrade(self.settings.sqlalchemy_url)
        self.database = Database(self.settings.sqlalchemy_url)
        self.env = {
            **os.environ,
            "TAPEFIT_DATA_DIR": str(self.settings.data_dir),
            "TAPEFIT_MNIST_PATH": str(SAMPLE),
            "TAPEFIT_LEASE_TIMEOUT": str(lease_timeout),
            "TAPEFIT_HEARTBEAT_INTERVAL": "0.4",
            "TAPEFIT_POLL_INTERVAL": "0.1",
            "TAPEFIT_FLUSH_INTERVAL": "0.2",
        }
        if database_url:
            self.env["TAPEFIT_DATABASE_URL"] = database_url
        else:
            self.env.pop("TAPEFIT_DATABASE_URL", None)
        self.processes: list[subprocess.Popen] = []

    def start_worker(self, *, data_dir: Path | None = None) -> subprocess.Popen:
        """A `tapefit worker`; with `data_dir`, one that shares no disk with the others (as
        on another machine: only the database in common)."""
        env = self.env if data_dir is None else {**self.env, "TAPEFIT_DATA_DIR": str(data_dir)}
        # The child keeps its own copy of the descriptor; ours can close at once.
        with (self.tmp_path / f"worker{len(self.processes)}.log").open("w") as log:
            process = subprocess.Popen([TAPEFIT, "worker"], env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def pause(self, process: subprocess.Popen) -> None:
        """SIGSTOP a worker at a moment it holds no write lock.

        A process stopped inside a write transaction would hold SQLite's lock for as long as
        it stays stopped and block every other writer, which is not the partition under test.
        """
        assert self.settings.database_url is None, "pause() checks SQLite's lock"
        while True:
            process.send_signal(signal.SIGSTOP)
            while Path(f"/proc/{process.pid}/stat").read_text().split(") ")[1][0] != "T":
                time.sleep(0.01)
            probe = sqlite3.connect(self.settings.data_dir / "tapefit.db", timeout=0,
                                    isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                return
            except sqlite3.OperationalError:  # stopped mid-write: let it commit, try again
                process.send_signal(signal.SIGCONT)
                time.sleep(0.05)
            finally:
                probe.close()

    def log(self, index: int) -> str:
        return (self.tmp_path / f"worker{index}.log").read_text()

    def submit(self, spec: dict) -> int:
        with self.database.session(write=True) as session:
            return jobs.submit_job(session=session, spec=JobSpec.model_validate(spec)).id

    def job(self, job_id: int) -> Job:
        with self.database.session() as session:
            return jobs.get_job(session=session, job_id=job_id)

    def steps(self, job_id: int) -> list[int]:
        with self.database.session() as session:
            page = history.metrics_page(session=session, job_id=job_id, after_step=-1, limit=10**6)
        return [m.step for m in page.items]

    def wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        logs = "\n".join(self.log(i)[-2000:] for i in range(len(self.processes)))
        raise AssertionError(f"timed out waiting for {what}\n{logs}")

    def wait_final(self, job_id: int, timeout: float = 90) -> Job:
        self.wait(lambda: JobState(self.job(job_id).state).is_final, timeout, f"job {job_id}")
        return self.job(job_id)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait()
        self.database.dispose()
