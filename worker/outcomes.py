"""How a job's run ended, and the one place that writes it down.

A run returns exactly one outcome; `persist` turns it into the job's state transition (with
the rows still held, in the same transaction). A worker that lost its lease has no outcome
to persist: the job is someone else's (the run raises LeaseLost instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.queue import leases
from service.queue.leases import Lease
from service.studies import driver, pruning
from worker.recorder import JobRecorder

log = logging.getLogger("tapefit.worker")


@dataclass(frozen=True)
class Succeeded:
    """Trained, evaluated and exported: the model's bytes go in with the state."""

    test_loss: float
    test_accuracy: float
    model: bytes
    stopped_early_at_epoch: int | None = None  # early stopping ended it after this epoch


@dataclass(frozen=True)
class Pruned:
    """A study's pruner stopped the trial after `epochs` epochs: its model and test figures at
    that point go in with the state."""

    epochs: int
    test_loss: float
    test_accuracy: float
    model: bytes


@dataclass(frozen=True)
class Failed:
    """The job's own fault (bad data, divergence, an error in its run): it will not retry."""

    error: str


@dataclass(frozen=True)
class Cancelled:
    """A cancel was asked; the run stopped at a batch boundary."""


@dataclass(frozen=True)
class HandedBack:
    """The job goes back to the queue and resumes from its checkpoint on the next claim:
    the worker is shutting down, or a write failed for a reason that is not the job's."""

    reason: str


Outcome = Succeeded | Pruned | Failed | Cancelled | HandedBack


def _ending(change: Callable[..., None], told: list[int]) -> Callable[..., None]:
    """`change` (a final state), then the study told of its trial's end, in its transaction."""

    def end(*, session: Session, lease: Lease, **values: Any) -> None:
        change(session=session, lease=lease, **values)
        study_id = pruning.study_of(session, lease.job_id)
        if study_id is not None:
            pruning.tell_job(session, lease.job_id)
            told.append(study_id)

    return end


def persist(outcome: Outcome, recorder: JobRecorder) -> None:
    """Write the outcome, with the rows the recorder still holds, in one transaction. A
    study's trial that ended is told to its study there, and the study's next trial is
    queued right after (the API's driver would within a second anyway)."""
    told: list[int] = []
    match outcome:
        case Succeeded(test_loss=loss, test_accuracy=accuracy, model=model,
                       stopped_early_at_epoch=stopped):
            recorder.record(_ending(leases.finish_job, told), test_loss=loss,
                            test_accuracy=accuracy, model=model, stopped_early_at_epoch=stopped)
        case Pruned(test_loss=loss, test_accuracy=accuracy, model=model):
            recorder.record(_ending(leases.mark_pruned, told), test_loss=loss,
                            test_accuracy=accuracy, model=model)
        case Failed(error=error):
            recorder.record(_ending(leases.fail_job, told), error=error)
        case Cancelled():
            recorder.record(_ending(leases.mark_cancelled, told))
        case HandedBack():
            recorder.record(leases.release_job)
    for study_id in told:
        try:
            driver.drive(recorder.database, study_id)
        except SQLAlchemyError as exc:  # the job's end is committed; a later pass will do
            log.warning("study %s: could not queue its next trial now: %s", study_id, exc)


def describe(outcome: Outcome) -> str:
    """The outcome in a log line."""
    match outcome:
        case Succeeded(test_accuracy=accuracy, stopped_early_at_epoch=None):
            return f"succeeded, test accuracy {accuracy:.4f}"
        case Succeeded(test_accuracy=accuracy, stopped_early_at_epoch=epoch):
            return f"succeeded, stopped early after epoch {epoch}, test accuracy {accuracy:.4f}"
        case Pruned(epochs=epochs, test_accuracy=accuracy):
            return f"pruned after epoch {epochs}, test accuracy {accuracy:.4f}"
        case Failed(error=error):
            return f"failed: {error}"
        case Cancelled():
            return "cancelled"
        case HandedBack(reason=reason):
            return f"handed back to the queue ({reason})"
