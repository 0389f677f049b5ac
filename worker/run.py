"""One claimed job's run: load its data and checkpoint, build the model, fit, evaluate and
export, and say how it ended (worker/outcomes.py). It writes rows, epochs and checkpoints
through its recorder as it goes; the end state is for `outcomes.persist`.

A requeued job resumes from its newest checkpoint, and the rows written after that
checkpoint are replaced, so its loss curve has no gaps or repeats.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

from sqlalchemy.exc import OperationalError

from service.config import Settings
from service.db import Database, is_disk_full
from service.queue import jobs, leases
from service.queue.leases import Lease, LeaseLost
from service.schemas import JobSpec
from worker.outcomes import Cancelled, Failed, HandedBack, Outcome, Succeeded
from worker.recorder import Heartbeat, JobRecorder

log = logging.getLogger("tapefit.worker")


class JobRun:
    """A job, run once by this worker under `lease`."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        lease: Lease,
        *,
        heartbeat: Heartbeat,
        stop: threading.Event,
        scratch: Path,
    ) -> None:
        self.database, self.settings, self.lease, self.scratch = database, settings, lease, scratch
        self.recorder = JobRecorder(
            database,
            lease,
            flush_rows=settings.flush_rows,
            flush_interval=settings.flush_interval,
            stop=stop,
            heartbeat=heartbeat,
            # Checkpoint only what the database has accepted: an epoch's rows, then its state.
            after_epoch=self._save_checkpoint,
        )
        # Set by _train once the model is built; fit raises Stopped only after that.
        self._checkpointer = None
        self._position = None
        self._batches = 0
        self._epochs = 0

    def execute(self) -> Outcome:
        """Run the job to its outcome. Raises LeaseLost when the job was taken from this
        worker, and lets database errors and a full disk out: they are not the job's fault,
        and the worker hands the job back for them."""
        # TensorFlow loads here, not at import, so `tapefit worker --help` stays fast.
        from worker.data import DataError
        from worker.training import Diverged, Stopped

        try:
            return self._train()
        except Stopped:
            if self.recorder.heartbeat.lost.is_set():
                raise LeaseLost(f"job {self.lease.job_id} was taken over") from None
            if not self.recorder.cancel_requested:
                self._save_checkpoint()  # with the rows still held; it may learn of a cancel
            if self.recorder.cancel_requested:
                return Cancelled()
            return HandedBack("the worker is stopping; checkpointed")
        except (DataError, Diverged) as exc:
            return Failed(str(exc))
        except (LeaseLost, OperationalError):
            raise
        except Exception as exc:  # any other error fails the job, not the worker
            if is_disk_full(exc):
                raise  # nor does a full disk (the export's files): the job is handed back
            log.exception("job %s: failed", self.lease.job_id)
            return Failed(f"{type(exc).__name__}: {exc}")

    def _train(self) -> Succeeded:
        from worker.checkpoint import Checkpointer, UnusableCheckpoint
        from worker.data import limited, load_mnist
        from worker.export import export_model
        from worker.models import build_model
        from worker.training import FitPosition, fit
        from worker.updaters import build_updater

        with self.database.session() as session:
            job = jobs.get_job(session=session, job_id=self.lease.job_id)
            spec, recorded_steps = JobSpec.model_validate(job.spec), job.steps_done
            stored = leases.load_checkpoint(session=session, job_id=self.lease.job_id)
            checkpoint = stored.content if stored is not None else None
        data = limited(
            load_mnist(self.settings.mnist_path), spec.dataset.train_limit, spec.dataset.test_limit
        )
        self._batches = math.ceil(len(data.x_train) / spec.batch_size)
        self._epochs = spec.epochs

        def fresh() -> tuple:
            model, updater = build_model(spec.model, seed=spec.seed), build_updater(spec.optimizer)
            return model, updater, Checkpointer(model, updater)

        model, updater, self._checkpointer = fresh()
        try:
            self._position = self._checkpointer.restore(
                checkpoint, batches_per_epoch=self._batches, recorded_steps=recorded_steps
            )
        except UnusableCheckpoint as exc:
            # Starting over beats failing the job; the rewind keeps the curve clean.
            log.warning("job %s: its checkpoint is unusable (%s); starting over",
                        self.lease.job_id, exc)
            model, updater, self._checkpointer = fresh()  # nothing half-restored
            self._position = FitPosition()
        del checkpoint, stored  # up to a few hundred MB for a large model

        position = self._position
        self.recorder.record(
            leases.start_job,
            total_steps=spec.epochs * self._batches,
            step=self._step(),
            epoch=position.epoch,
        )
        if position.epoch or position.batch:
            log.info("job %s: resuming at epoch %s, batch %s",
                     self.lease.job_id, position.epoch, position.batch)
        test_loss, test_accuracy = fit(
            model, updater, data, epochs=spec.epochs, batch_size=spec.batch_size,
            seed=spec.seed, shuffle=spec.shuffle, callback=self.recorder, position=position,
        )
        return Succeeded(test_loss, test_accuracy, export_model(model, scratch=self.scratch))

    def _step(self) -> int:
        return self._position.epoch * self._batches + self._position.batch

    def _save_checkpoint(self) -> None:
        if self._position.epoch >= self._epochs:
            # After the last epoch: the job's end drops a checkpoint moments after it is
            # written, and a worker lost now costs at most the evaluation and the export.
            return
        self.recorder.record(leases.save_checkpoint,
                             content=self._checkpointer.pack(self._position), step=self._step())
