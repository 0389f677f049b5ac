"""The worker process: claim the oldest queued job, run it (worker/run.py), persist its one
outcome (worker/outcomes.py), repeat; between jobs, sweep for the jobs of lost workers."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError

from service.config import Settings
from service.db import Database, is_disk_full, is_transient
from service.files import sweep_abandoned
from service.observability.logs import configure_logging, job_context
from service.queue import leases
from service.queue.leases import Lease, LeaseLost
from service.queue.sweeper import sweep_once
from service.studies.driver import drive_all
from worker.outcomes import HandedBack, Outcome, describe, persist
from worker.recorder import Heartbeat, Presence
from worker.run import JobRun

if TYPE_CHECKING:
    from worker.kits import Kits

log = logging.getLogger("tapefit.worker")


class Worker:
    """Runs jobs one after another until `stop` is set."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.database = Database(settings.sqlalchemy_url, busy_timeout=settings.sqlite_busy_timeout)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.presence = Presence(self.database, self.worker_id, settings.lease_timeout)
        self.stop = threading.Event()
        self._kits: Kits | None = None  # made with the first job: it loads TensorFlow

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the worker's database connections."""
        self.database.dispose()

    def run_forever(self) -> None:
        """Claim and run jobs; while the queue is empty, poll it and sweep for lost jobs."""
        log.info("worker %s ready", self.worker_id)
        last_sweep = -math.inf
        while not self.stop.is_set():
            try:
                if time.monotonic() - last_sweep >= self.settings.heartbeat_interval:
                    last_sweep = time.monotonic()
                    self.presence.beat()  # even idle: the API's /readyz counts these
                    sweep_once(self.database, self.settings)
                    drive_all(self.database)  # studies go on while no API runs
                if self.run_once():
                    continue
            except (OperationalError, OSError) as exc:
                # A database locked past the busy timeout, or down for a moment, or a full
                # disk: the worker waits and tries again (any job it held went back to the
                # queue). Other errors (a missing table, a read-only file) are faults to see,
                # not to wait out: they stop the worker.
                if is_disk_full(exc):
                    log.error("worker %s: the disk is full; waiting for space: %s",
                              self.worker_id, getattr(exc, "orig", exc))
                elif isinstance(exc, OperationalError) and is_transient(exc):
                    log.warning("worker %s: database unavailable, retrying: %s",
                                self.worker_id, exc.orig)
                else:
                    raise
                self.stop.wait(self.settings.heartbeat_interval)
                continue
            self.stop.wait(self.settings.poll_interval)
        self.presence.leave()
        log.info("worker %s stopped", self.worker_id)

    def run_once(self) -> bool:
        """Run the oldest queued job, if any; True when there was one."""
        with self.database.session(write=True) as session:
            lease = leases.claim_job(session=session, worker_id=self.worker_id)
        if lease is None:
            return False
        with job_context(lease.job_id):  # every line logged meanwhile carries the job id
            log.info("job %s: claimed (lease %s)", lease.job_id, lease.token)
            self.run_job(lease)
        return True

    def run_job(self, lease: Lease) -> Outcome | None:
        """Run a claimed job and persist its outcome; None when the lease was lost (the job
        is someone else's now). Database errors and a full disk hand the job back and are
        raised, for run_forever to wait out."""
        with Heartbeat(self.database, lease, self.settings.heartbeat_interval,
                       presence=self.presence) as heartbeat:
            run = JobRun(self.database, self.settings, lease, heartbeat=heartbeat,
                         stop=self.stop, scratch=self.scratch_dir, kits=self.kits)
            try:
                outcome = run.execute()
                with run.phases.timing("persist"):
                    persist(outcome, run.recorder)
            except LeaseLost as exc:
                log.warning("job %s: %s; leaving it", lease.job_id, exc)
                return None
            except (OperationalError, OSError) as exc:  # only a full disk's OSError comes out
                self._hand_back(run, exc)
                raise
        log.info("job %s: %s", lease.job_id, describe(outcome))
        log.info("job %s: phases %s", lease.job_id, run.phases)
        return outcome

    def _hand_back(self, run: JobRun, exc: Exception) -> None:
        """After a write failed mid-job: return the job to the queue, where the next worker
        resumes it from its checkpoint. If the database does not answer this either (a full
        disk refuses this write too), the sweepers requeue the job once its lease times out."""
        reason = "the disk is full" if is_disk_full(exc) else "a database write failed"
        log.warning("job %s: %s; handing the job back", run.lease.job_id, reason)
        try:
            persist(HandedBack(reason), run.recorder)
        except (OperationalError, OSError, LeaseLost) as again:
            log.warning("job %s: could not hand it back (%s); the sweepers will",
                        run.lease.job_id, again)

    @property
    def kits(self) -> Kits:
        """What this worker keeps between jobs of one architecture (worker/kits.py)."""
        if self._kits is None:
            from worker.kits import Kits

            self._kits = Kits()
        return self._kits

    @property
    def scratch_dir(self) -> Path:
        """Where the worker's temporary files go: on the data dir's disk, not /tmp, and
        swept at start (see `sweep_scratch`)."""
        return self.settings.data_dir / "tmp"

    def sweep_scratch(self) -> None:
        """Remove the scratch folders of workers killed while converting a model (as large
        as the model) or copying a dataset. Several workers may share the data dir: a live
        one's are locked."""
        from service.datasets.storage import SCRATCH_PREFIX as DATASET_PREFIX
        from worker.export import SCRATCH_PREFIX

        for prefix in (SCRATCH_PREFIX, DATASET_PREFIX):
            for folder in sweep_abandoned(self.scratch_dir, prefix=prefix):
                log.info("worker %s: removed %s, left by a worker that was killed",
                         self.worker_id, folder)


def warm_up(settings: Settings) -> None:
    """Load TensorFlow, and MNIST when it is a local file, before the first job: an idle
    worker then starts a submitted job's training within a second."""
    import worker.training  # noqa: F401 (TensorFlow and Keras)
    from worker.data import DataError, load_mnist

    if settings.mnist_path is not None:
        try:
            load_mnist(settings.mnist_path)  # cached for the jobs
        except DataError:
            pass  # each job reports it, with the message


def main(settings: Settings | None = None) -> None:
    """Entry point of `tapefit worker` (`python -m worker`)."""
    from service.config import get_settings
    from service.migrate import upgrade

    settings = settings or get_settings()
    configure_logging(settings.log_format)
    upgrade(settings.sqlalchemy_url)
    warm_up(settings)
    worker = Worker(settings)
    worker.sweep_scratch()

    def _stop(signum: int, _frame: object) -> None:
        log.info("worker %s: %s; stopping after this batch",
                 worker.worker_id, signal.strsignal(signum))
        worker.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with worker:
        worker.run_forever()
