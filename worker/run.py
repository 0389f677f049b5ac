"""One claimed job's run: load its data and checkpoint, build the model, fit, evaluate and
export, and say how it ended (worker/outcomes.py). It writes rows, epochs and checkpoints
through its recorder as it goes; the end state is for `outcomes.persist`.

A requeued job resumes from its newest checkpoint, and the rows written after that
checkpoint are replaced, so its loss curve has no gaps or repeats. A study's trial is asked
after each epoch whether its pruner stops it there (service/studies/pruning.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from service.config import Settings
from service.db import Database, is_disk_full
from service.models import EpochSummary
from service.queue import jobs, leases
from service.queue.leases import Lease, LeaseLost
from service.schemas import JobSpec
from service.studies import pruning
from worker.outcomes import Cancelled, Failed, HandedBack, Outcome, Pruned, Succeeded
from worker.recorder import Heartbeat, JobRecorder

if TYPE_CHECKING:
    from worker.kits import Kits

log = logging.getLogger("tapefit.worker")


class TrialPruned(Exception):
    """The study's pruner stopped this trial after `epochs` epochs."""

    def __init__(self, epochs: int) -> None:
        super().__init__(f"pruned after epoch {epochs}")
        self.epochs = epochs


class Phases:
    """Where a job run's seconds went, phase by phase, for the worker's log line at its end
    (and `tapefit bench`'s small jobs, which read it)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timing(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.3f} s" for name, seconds in self.seconds.items())


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
        kits: Kits,
    ) -> None:
        self.database, self.settings, self.lease, self.scratch = database, settings, lease, scratch
        self.kits = kits  # the worker's, kept between its jobs
        self.recorder = JobRecorder(
            database,
            lease,
            flush_rows=settings.flush_rows,
            flush_interval=settings.flush_interval,
            stop=stop,
            heartbeat=heartbeat,
            # Checkpoint only what the database has accepted: an epoch's rows, then its state;
            # then a trial asks its study's pruner.
            after_epoch=self._after_epoch,
        )
        # Set by _train once the model is built; fit raises Stopped only after that.
        self._checkpointer = None
        self._position = None
        self._batches = 0
        self._epochs = 0
        self._trial = False  # a study's trial: asked whether to prune after each epoch
        self.phases = Phases()

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

    def _train(self) -> Succeeded | Pruned:
        from worker.checkpoint import Checkpointer, UnusableCheckpoint
        from worker.data import load_job_data
        from worker.training import EarlyStopping, FitPosition, fit, hold_out

        with self.database.session() as session:
            job = jobs.get_job(session=session, job_id=self.lease.job_id)
            spec, recorded_steps = JobSpec.model_validate(job.spec), job.steps_done
            self._trial = job.study_id is not None
            stored = leases.load_checkpoint(session=session, job_id=self.lease.job_id)
            checkpoint = stored.content if stored is not None else None
        with self.phases.timing("data"):
            data, info = load_job_data(spec.dataset, settings=self.settings,
                                       database=self.database, job_id=self.lease.job_id)
            data, validation = hold_out(data, spec.validation_split, spec.seed)
        self._batches = math.ceil(len(data.x_train) / spec.batch_size)
        self._epochs = spec.epochs

        kit = self.kits.take(spec, info.input_shape)

        def fresh() -> tuple:
            model, updater = kit.start(spec, info.input_shape)
            stopping = (EarlyStopping(spec.early_stopping, model)
                        if spec.early_stopping is not None else None)
            return model, updater, stopping, Checkpointer(model, updater, stopping)

        with self.phases.timing("build"):
            model, updater, stopping, self._checkpointer = fresh()
            try:
                self._position = self._checkpointer.restore(
                    checkpoint, batches_per_epoch=self._batches, recorded_steps=recorded_steps
                )
            except UnusableCheckpoint as exc:
                # Starting over beats failing the job; the rewind keeps the curve clean.
                log.warning("job %s: its checkpoint is unusable (%s); starting over",
                            self.lease.job_id, exc)
                model, updater, stopping, self._checkpointer = fresh()  # nothing half-restored
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
        try:
            with self.phases.timing("fit"):  # tracing, epochs and their evaluations
                test_loss, test_accuracy = fit(
                    model, updater, data, epochs=spec.epochs, batch_size=spec.batch_size,
                    seed=spec.seed, shuffle=spec.shuffle, callback=self.recorder,
                    position=position, validation=validation, early_stopping=stopping,
                    compiler=kit.compile,
                )
        except TrialPruned as pruned:
            # Its model and test figures as they were after that epoch, kept with the state.
            test_loss, test_accuracy = self._test_figures(pruned.epochs - 1)
            with self.phases.timing("export"):
                exported = kit.export(scratch=self.scratch, standardize=info.standardize)
            return Pruned(pruned.epochs, test_loss, test_accuracy, exported)
        with self.phases.timing("export"):
            exported = kit.export(scratch=self.scratch, standardize=info.standardize)
        return Succeeded(test_loss, test_accuracy, exported,
                         stopped_early_at_epoch=position.stopped_early_at or None)

    def _after_epoch(self) -> None:
        """An epoch's rows are committed: checkpoint, then ask the study's pruner (not after
        the last epoch, or one early stopping ends on: the trial completes there)."""
        self._save_checkpoint()
        position = self._position
        if (self._trial and position.epoch < self._epochs and not position.stopped_early_at
                and pruning.should_prune(self.database, self.lease.job_id)):
            raise TrialPruned(position.epoch)

    def _test_figures(self, epoch: int) -> tuple[float, float]:
        with self.database.session() as session:
            row = session.scalars(select(EpochSummary).where(
                EpochSummary.job_id == self.lease.job_id, EpochSummary.epoch == epoch)).one()
        return row.test_loss, row.test_accuracy

    def _step(self) -> int:
        return self._position.epoch * self._batches + self._position.batch

    def _save_checkpoint(self) -> None:
        if self._position.epoch >= self._epochs or self._position.stopped_early_at:
            # After the last epoch: the job's end drops a checkpoint moments after it is
            # written, and a worker lost now costs at most the evaluation and the export.
            return
        self.recorder.record(leases.save_checkpoint,
                             content=self._checkpointer.pack(self._position), step=self._step())
