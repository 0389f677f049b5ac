"""The worker's side of a study: after each epoch of a trial, report it and ask the pruner
whether the trial goes on (the leases stay the truth about the job; this only decides)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import Database
from service.models import Study, StudyTrial
from service.studies import search
from service.studies.schemas import StudyCreate, StudyState
from service.studies.trials import load_trials, tell_job

__all__ = ["should_prune", "study_of", "tell_job"]


def study_of(session: Session, job_id: int) -> int | None:
    """The study whose trial `job_id` is, if any."""
    return session.scalar(select(StudyTrial.study_id).where(StudyTrial.job_id == job_id))


def should_prune(database: Database, job_id: int) -> bool:
    """Whether the trial that job `job_id` runs should stop at the epoch it just committed.
    The pruner's notes on the trial (ASHA's rungs) are kept in its row for the next asks."""
    with database.session() as session:
        trial = session.scalar(select(StudyTrial).where(StudyTrial.job_id == job_id))
        if trial is None or trial.state != search.RUNNING:
            return False
        study = session.get(Study, trial.study_id)
        if study is None or study.state != StudyState.running:
            return False
        spec = StudyCreate.stored(study.spec)
        if spec.pruner == "none":
            return False
        records = [stored.record for stored in load_trials(session, study, spec)]
        number, attrs_before = trial.number, dict(trial.system_attrs)
    if not records[number].intermediate:
        return False  # the objective was not measured (no finite value yet)
    prune, attrs = search.should_prune(spec, records, number)
    if attrs != attrs_before:
        with database.session(write=True) as session:
            session.execute(
                update(StudyTrial)
                .where(StudyTrial.study_id == study.id, StudyTrial.number == number,
                       StudyTrial.state == search.RUNNING)
                .values(system_attrs=attrs)
                .execution_options(synchronize_session=False)
            )
    return prune
