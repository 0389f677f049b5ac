"""How a job's run ended, and the one place that writes it down.

A run returns exactly one outcome; `persist` turns it into the job's state transition (with
the rows still held, in the same transaction). A worker that lost its lease has no outcome
to persist: the job is someone else's (the run raises LeaseLost instead).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.queue import leases
from worker.recorder import JobRecorder


@dataclass(frozen=True)
class Succeeded:
    """Trained, evaluated and exported: the model's bytes go in with the state."""

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


Outcome = Succeeded | Failed | Cancelled | HandedBack


def persist(outcome: Outcome, recorder: JobRecorder) -> None:
    """Write the outcome, with the rows the recorder still holds, in one transaction."""
    match outcome:
        case Succeeded(test_loss=loss, test_accuracy=accuracy, model=model):
            recorder.record(leases.finish_job, test_loss=loss, test_accuracy=accuracy,
                            model=model)
        case Failed(error=error):
            recorder.record(leases.fail_job, error=error)
        case Cancelled():
            recorder.record(leases.mark_cancelled)
        case HandedBack():
            recorder.record(leases.release_job)


def describe(outcome: Outcome) -> str:
    """The outcome in a log line."""
    match outcome:
        case Succeeded(test_accuracy=accuracy):
            return f"succeeded, test accuracy {accuracy:.4f}"
        case Failed(error=error):
            return f"failed: {error}"
        case Cancelled():
            return "cancelled"
        case HandedBack(reason=reason):
            return f"handed back to the queue ({reason})"
