"""Studies as the API sees them: create, read, list, cancel, and their public view.

States (each change in one short write transaction):

    running  -> succeeded  driver.apply: every trial has ended
    running  -> cancelled  cancel_study: its queued trials end now, running ones within a second
    succeeded, cancelled: final.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.models import Job, Study, StudyTrial, utcnow
from service.queue import jobs
from service.schemas import JobState
from service.studies import driver, search
from service.studies.schemas import (
    BestRead,
    StudyCreate,
    StudyRead,
    StudyState,
    StudySummary,
    TrialRead,
)
from service.studies.trials import StoredTrial, StudyConflict, StudyNotFound, load_trials


def create_study(*, session: Session, spec: StudyCreate) -> Study:
    """Store a study and queue its first trials, in the caller's transaction."""
    study = Study(name=spec.name, state=StudyState.running, spec=spec.model_dump(mode="json"),
                  created_at=utcnow(), revision=0)
    session.add(study)
    session.flush()
    driver.advance(session, study)
    session.refresh(study)
    return study


def get_study(*, session: Session, study_id: int) -> Study:
    """The study, or StudyNotFound."""
    study = session.get(Study, study_id)
    if study is None:
        raise StudyNotFound(study_id)
    return study


def list_studies(*, session: Session, limit: int, offset: int) -> tuple[Sequence[Study], int]:
    """A page of studies, newest first, and how many there are."""
    total = session.scalar(select(func.count()).select_from(Study)) or 0
    page = session.scalars(select(Study).order_by(Study.id.desc()).limit(limit).offset(offset))
    return page.all(), total


def cancel_study(*, session: Session, study_id: int) -> Study:
    """Stop asking for trials and cancel the unfinished ones (409 once the study ended)."""
    study = get_study(session=session, study_id=study_id)
    stopped = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.state == StudyState.running)
        .values(state=StudyState.cancelled, finished_at=utcnow(), revision=Study.revision + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not stopped:
        session.refresh(study)
        raise StudyConflict(f"study {study_id} is already {study.state}")
    unfinished = session.scalars(
        select(Job.id).where(Job.study_id == study_id,
                             Job.state.in_([JobState.queued, JobState.running]))
    ).all()
    for job_id in unfinished:
        jobs.cancel_job(session=session, job_id=job_id)
    session.execute(
        update(StudyTrial)
        .where(StudyTrial.study_id == study_id, StudyTrial.state == search.RUNNING)
        .values(state=search.FAIL, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.refresh(study)
    return study


def best_trial(spec: StudyCreate, trials: Sequence[StoredTrial]) -> StoredTrial | None:
    """The completed trial with the best objective; the earlier one on a tie."""
    done = [t for t in trials if t.row.state == search.COMPLETE and t.row.value is not None]
    if not done:
        return None
    sign = -1 if spec.objective.direction == "maximize" else 1
    return min(done, key=lambda t: (sign * t.row.value, t.row.number))


def best_job_id(*, session: Session, study_id: int) -> int | None:
    """The job of the study's best completed trial (the `study-{id}` model alias)."""
    spec_json = session.scalar(select(Study.spec).where(Study.id == study_id))
    if spec_json is None:
        raise StudyNotFound(study_id)
    maximize = spec_json.get("objective", {}).get("direction") == "maximize"
    value = StudyTrial.value.desc() if maximize else StudyTrial.value.asc()
    return session.scalar(
        select(StudyTrial.job_id)
        .where(StudyTrial.study_id == study_id, StudyTrial.state == search.COMPLETE,
               StudyTrial.value.is_not(None), StudyTrial.job_id.is_not(None))
        .order_by(value, StudyTrial.number).limit(1)
    )


def _trial_view(trial: StoredTrial) -> TrialRead:
    row = trial.row
    return TrialRead(
        number=row.number,
        job_id=row.job_id,
        state=trial.job_state or "failed",
        params=row.params,
        value=row.value,  # told when the trial ended: pruned ones at their last epoch
        epochs_run=len(trial.epochs),
        error=row.system_attrs.get("tapefit:error"),
    )


def _best_view(trial: StoredTrial | None) -> BestRead | None:
    if trial is None:
        return None
    return BestRead(number=trial.row.number, job_id=trial.row.job_id, params=trial.row.params,
                    value=trial.row.value)


def describe(*, session: Session, study: Study) -> StudyRead:
    """The study as the API shows it, with every trial."""
    spec = StudyCreate.stored(study.spec)
    trials = load_trials(session, study, spec)
    return StudyRead(
        id=study.id,
        name=study.name,
        state=StudyState(study.state),
        spec=spec,
        created_at=study.created_at,
        finished_at=study.finished_at,
        trials=[_trial_view(t) for t in trials],
        best=_best_view(best_trial(spec, trials)),
        epochs_run=sum(len(t.epochs) for t in trials),
    )


def summarize(*, session: Session, study: Study) -> StudySummary:
    """The study in a list: its counts and best, not every trial."""
    spec = StudyCreate.stored(study.spec)
    trials = load_trials(session, study, spec)
    return StudySummary(
        id=study.id, name=study.name, state=StudyState(study.state),
        created_at=study.created_at, finished_at=study.finished_at, trials=len(trials),
        trials_planned=spec.trials, best=_best_view(best_trial(spec, trials)),
    )
