"""The worker process: claim the oldest queued job, train it, record every batch, repeat.

A requeued job (its worker died, or shut down) resumes from its newest checkpoint, and the
rows written after that checkpoint are replaced, so its loss curve has no gaps or repeats.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path

from sqlalchemy.exc import OperationalError

from service import jobs, leases
from service.config import Settings
from service.db import Database, is_disk_full, is_transient
from service.files import sweep_abandoned
from service.leases import Lease, LeaseLost
from service.schemas import JobSpec
from service.sweeper import sweep_once
from worker.recorder import Heartbeat, JobRecorder, Presence

log = logging.getLogger("tapefit.worker")


class Worker:
    """Runs jobs one after another until `stop` is set."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.database = Database(settings.sqlalchemy_url, busy_timeout=settings.sqlite_busy_timeout)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.presence = Presence(self.database, self.worker_id, settings.lease_timeout)
        self.stop = threading.Event()

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
        log.info("job %s: claimed (lease %s)", lease.job_id, lease.token)
        try:
            self.run_job(lease)
        except LeaseLost as exc:
            log.warning("job %s: %s; leaving it", lease.job_id, exc)
        except (OperationalError, OSError) as exc:  # _train lets only a full disk's OSError out
            self._hand_back(lease, exc)
            raise
        return True

    def _hand_back(self, lease: Lease, exc: Exception) -> None:
        """After a write failed mid-job: return the job to the queue, where the next worker
        resumes it from its checkpoint. If the database does not answer this either (a full
        disk refuses this write too), the sweepers requeue the job once its lease times out."""
        reason = "the disk is full" if is_disk_full(exc) else "a database write failed"
        log.warning("job %s: %s; handing the job back", lease.job_id, reason)
        try:
            with self.database.session(write=True) as session:
                leases.release_job(session=session, lease=lease)
        except (OperationalError, LeaseLost) as exc:
            log.warning("job %s: could not hand it back (%s); the sweepers will", lease.job_id,
                        exc)

    def run_job(self, lease: Lease) -> None:
        """Train (or resume), evaluate and export one claimed job, recording its end state."""
        with Heartbeat(self.database, lease, self.settings.heartbeat_interval,
                       presence=self.presence) as heartbeat:
            recorder = JobRecorder(
                self.database,
                lease,
                flush_rows=self.settings.flush_rows,
                flush_interval=self.settings.flush_interval,
                stop=self.stop,
                heartbeat=heartbeat,
            )
            self._train(lease, recorder)

    def _train(self, lease: Lease, recorder: JobRecorder) -> None:
        # TensorFlow loads here, not at import, so `tapefit worker --help` stays fast.
        from worker.checkpoint import Checkpointer, UnusableCheckpoint
        from worker.data import DataError, limited, load_mnist
        from worker.export import export_model
        from worker.models import Model, build_model
        from worker.training import Diverged, FitPosition, Stopped, fit
        from worker.updaters import Updater, build_updater

        with self.database.session() as session:
            job = jobs.get_job(session=session, job_id=lease.job_id)
            spec, recorded_steps = JobSpec.model_validate(job.spec), job.steps_done
            stored = leases.load_checkpoint(session=session, job_id=lease.job_id)
            checkpoint = stored.content if stored is not None else None
        try:
            data = limited(
                load_mnist(self.settings.mnist_path),
                spec.dataset.train_limit,
                spec.dataset.test_limit,
            )
            batches = math.ceil(len(data.x_train) / spec.batch_size)

            def fresh() -> tuple[Model, Updater, Checkpointer]:
                model = build_model(spec.model, seed=spec.seed)
                updater = build_updater(spec.optimizer)
                return model, updater, Checkpointer(model, updater)

            model, updater, checkpointer = fresh()
            try:
                position = checkpointer.restore(
                    checkpoint, batches_per_epoch=batches, recorded_steps=recorded_steps
                )
            except UnusableCheckpoint as exc:
                # Starting over beats failing the job; the rewind keeps the curve clean.
                log.warning("job %s: its checkpoint is unusable (%s); starting over",
                            lease.job_id, exc)
                model, updater, checkpointer = fresh()  # nothing half-restored
                position = FitPosition()
            del checkpoint, stored  # up to a few hundred MB for a large model

            def save_checkpoint() -> None:
                recorder.record(leases.save_checkpoint, content=checkpointer.pack(position),
                                step=position.epoch * batches + position.batch)

            recorder.record(
                leases.start_job,
                total_steps=spec.epochs * batches,
                step=position.epoch * batches + position.batch,
                epoch=position.epoch,
            )
            if position.epoch or position.batch:
                log.info("job %s: resuming at epoch %s, batch %s",
                         lease.job_id, position.epoch, position.batch)
            # Checkpoint only what the database has accepted: rows first, then the state.
            recorder.after_epoch = save_checkpoint
            test_loss, test_accuracy = fit(
                model, updater, data, epochs=spec.epochs, batch_size=spec.batch_size,
                seed=spec.seed, shuffle=spec.shuffle, callback=recorder, position=position,
            )
            exported = export_model(model, self.job_dir(lease.job_id),
                                    scratch=self.scratch_dir)
        except Stopped:
            if recorder.heartbeat.lost.is_set():
                raise LeaseLost(f"job {lease.job_id} was taken over") from None
            if not recorder.cancel_requested:
                save_checkpoint()  # with the rows still held; it may learn of a cancel too
            if recorder.cancel_requested:
                recorder.record(leases.mark_cancelled)
                log.info("job %s: cancelled", lease.job_id)
                return
            recorder.record(leases.release_job)
            log.info("job %s: checkpointed and handed back to the queue", lease.job_id)
            return
        except (DataError, Diverged) as exc:
            recorder.record(leases.fail_job, error=str(exc))
            log.warning("job %s: failed: %s", lease.job_id, exc)
            return
        except (LeaseLost, OperationalError):
            raise  # not the job's fault: run_once decides what becomes of it
        except Exception as exc:  # any other error fails the job, not the worker
            if is_disk_full(exc):
                raise  # nor does a full disk (the export's files): it is handed back
            log.exception("job %s: failed", lease.job_id)
            recorder.record(leases.fail_job, error=f"{type(exc).__name__}: {exc}")
            return
        recorder.record(
            leases.finish_job,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            model=exported.read_bytes(),
        )
        log.info("job %s: succeeded, test accuracy %.4f", lease.job_id, test_accuracy)

    def job_dir(self, job_id: int) -> Path:
        return self.settings.models_dir / str(job_id)

    @property
    def scratch_dir(self) -> Path:
        """Where the worker's temporary files go: on the data dir's disk, not /tmp, and
        swept at start (see `sweep_scratch`)."""
        return self.settings.data_dir / "tmp"

    def sweep_scratch(self) -> None:
        """Remove the scratch folders of workers killed while converting a model (as large
        as the model). Several workers may share the data dir: a live one's are locked."""
        from worker.export import SCRATCH_PREFIX

        for folder in sweep_abandoned(self.scratch_dir, prefix=SCRATCH_PREFIX):
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

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = settings or get_settings()
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
