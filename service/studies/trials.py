"""A study's trials as stored: each a `study_trials` row (Optuna's view) and a job (the
queue's). Reading them into `TrialRecord`s, a trial's objective value, and telling a trial's
end (the job's final state) to its row."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.models import EpochSummary, Job, Study, StudyTrial, utcnow
from service.schemas import JobSpec, JobState
from service.studies.schemas import StudyCreate
from service.studies.search import COMPLETE, FAIL, PRUNED, RUNNING, TrialRecord


class StudyNotFound(LookupError):
    def __init__(self, study_id: int | str) -> None:
        super().__init__(f"study {study_id} not found")


class StudyConflict(RuntimeError):
    """The study is in a state that does not allow what was asked."""


@dataclass
class StoredTrial:
    """A trial's row, its job (None when the spec could not be made or the job was deleted),
    and the objective after each of the job's epochs."""

    row: StudyTrial
    job: Job | None
    record: TrialRecord
    epochs: list[EpochSummary]

    @property
    def job_state(self) -> JobState | None:
        return JobState(self.job.state) if self.job is not None else None


def metric_of(epoch: EpochSummary, metric: str) -> float | None:
    """One epoch's figure for `metric` (val_accuracy, val_loss, train_accuracy, train_loss)."""
    return getattr(epoch, metric)


def kept_epoch(spec: JobSpec, epochs: Sequence[EpochSummary]) -> EpochSummary | None:
    """The epoch whose weights the job ended with: the last, or with early stopping's
    restore_best_weights the best by its monitor (the worker's rule, EarlyStoppingSpec)."""
    if not epochs:
        return None
    stopping = spec.early_stopping
    if stopping is None or not stopping.restore_best_weights:
        return epochs[-1]
    best, best_value = epochs[0], metric_of(epochs[0], stopping.monitor)
    for epoch in epochs[1:]:
        value = metric_of(epoch, stopping.monitor)
        if stopping.improves(value, best_value):
            best, best_value = epoch, value
    return best


def trial_value(study: StudyCreate, job: Job, epochs: Sequence[EpochSummary]) -> float | None:
    """The objective of an ended trial: at the kept epoch when it succeeded, at its last
    epoch when it was pruned."""
    if job.state == JobState.succeeded:
        epoch = kept_epoch(JobSpec.model_validate(job.spec), epochs)
    else:
        epoch = epochs[-1] if epochs else None
    return None if epoch is None else metric_of(epoch, study.objective.metric)


def load_trials(session: Session, study: Study, spec: StudyCreate) -> list[StoredTrial]:
    """The study's trials in number order, with their jobs and per-epoch objective."""
    rows = session.scalars(
        select(StudyTrial).where(StudyTrial.study_id == study.id).order_by(StudyTrial.number)
    ).all()
    job_ids = [row.job_id for row in rows if row.job_id is not None]
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
    epochs: dict[int, list[EpochSummary]] = defaultdict(list)
    if job_ids:
        for epoch in session.scalars(
            select(EpochSummary).where(EpochSummary.job_id.in_(job_ids))
            .order_by(EpochSummary.job_id, EpochSummary.epoch)
        ):
            epochs[epoch.job_id].append(epoch)
    stored = []
    for row in rows:
        job = jobs.get(row.job_id) if row.job_id is not None else None
        figures = epochs.get(row.job_id, []) if row.job_id is not None else []
        intermediate = {
            e.epoch + 1: v for e in figures
            if (v := metric_of(e, spec.objective.metric)) is not None
        }
        record = TrialRecord(number=row.number, state=row.state, params=dict(row.params),
                             system_attrs=dict(row.system_attrs), value=row.value,
                             intermediate=intermediate)
        stored.append(StoredTrial(row=row, job=job, record=record, epochs=figures))
    return stored


def outcome_of(study: StudyCreate, job: Job | None, epochs: Sequence[EpochSummary]
               ) -> tuple[str, float | None] | None:
    """What Optuna should be told of a running trial whose job has ended; None while it
    runs (a requeued job goes on)."""
    if job is None:
        return FAIL, None
    state = JobState(job.state)
    if not state.is_final:
        return None
    if state in (JobState.succeeded, JobState.pruned):
        value = trial_value(study, job, epochs)
        if value is None:  # the objective was never measured: nothing to compare
            return FAIL, None
        return (COMPLETE if state == JobState.succeeded else PRUNED), value
    return FAIL, None  # failed or cancelled


def tell_job(session: Session, job_id: int) -> None:
    """Record the end of the trial `job_id` runs, if it is one, in the transaction that ends
    the job (the worker calls this as it persists the outcome)."""
    trial = session.scalar(select(StudyTrial).where(StudyTrial.job_id == job_id))
    if trial is None or trial.state != RUNNING:
        return
    study = session.get(Study, trial.study_id)
    # Fresh: the state was just changed by an UPDATE this session did not track.
    job = session.get(Job, job_id, populate_existing=True)
    if study is None or job is None:
        return
    spec = StudyCreate.stored(study.spec)
    epochs = session.scalars(
        select(EpochSummary).where(EpochSummary.job_id == job_id).order_by(EpochSummary.epoch)
    ).all()
    told = outcome_of(spec, job, epochs)
    if told is not None:
        mark(session, study_id=trial.study_id, number=trial.number, state=told[0],
             value=told[1])


def mark(session: Session, *, study_id: int, number: int, state: str, value: float | None
         ) -> bool:
    """running -> complete | pruned | fail, once (guarded in the UPDATE)."""
    return bool(session.execute(
        update(StudyTrial)
        .where(StudyTrial.study_id == study_id, StudyTrial.number == number,
               StudyTrial.state == RUNNING)
        .values(state=state, value=value, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount)


__all__ = ["COMPLETE", "FAIL", "PRUNED", "RUNNING", "StoredTrial", "StudyConflict",
           "StudyNotFound", "kept_epoch", "load_trials", "mark", "outcome_of", "tell_job",
           "trial_value"]
