"""The study driver: tells Optuna how ended trials did, asks it for the next ones, queues each
as an ordinary job, and ends the study when its last trial has.

Any process may drive: the API in the background, each idle worker between claims, and a
worker right after a trial of its ends (so the next trial is queued at once). One pass reads
the study, decides outside any transaction (a sampler over many trials takes a moment), then
writes in one short transaction that first raises the study's `revision` from the value it
read: if another driver acted meanwhile, the write changes nothing and the pass is dropped.
So only one driver acts on a study at a time, and nothing is lost when any process dies:
everything a pass needs is in the database.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from service.db import Database
from service.models import Study, StudyTrial, utcnow
from service.queue import jobs
from service.studies import search
from service.studies.schemas import StudyCreate, StudyState
from service.studies.space import SpaceError, validated
from service.studies.trials import StoredTrial, load_trials, mark, outcome_of

log = logging.getLogger("tapefit.studies")


@dataclass
class Plan:
    """What one pass will write."""

    tells: list[tuple[int, str, float | None]] = field(default_factory=list)
    # New trials, each with its job spec, or the reason none could be made.
    asks: list[tuple[search.TrialRecord, dict | None, str | None]] = field(default_factory=list)
    finish: bool = False

    def __bool__(self) -> bool:
        return bool(self.tells or self.asks or self.finish)


def plan(spec: StudyCreate, trials: list[StoredTrial]) -> Plan:
    """The tells, asks and end a study of `trials` needs now."""
    result = Plan()
    records = []
    for trial in trials:
        record = trial.record
        if record.state == search.RUNNING:
            told = outcome_of(spec, trial.job, trial.epochs)
            if told is not None:
                result.tells.append((record.number, *told))
                record = search.TrialRecord(
                    number=record.number, state=told[0], params=record.params,
                    system_attrs=record.system_attrs,
                    value=told[1] if told[0] == search.COMPLETE else None,
                    intermediate=record.intermediate,
                )
        records.append(record)
    active = sum(record.state == search.RUNNING for record in records)
    base = spec.base.model_dump(mode="json")
    while active < spec.parallel and len(records) < spec.trials:
        record = search.ask(spec, records)
        try:
            job_spec, error = validated(base, record.params).model_dump(mode="json"), None
        except SpaceError as exc:  # a combination no single value showed wrong
            job_spec, error = None, f"the trial's spec is refused: {exc}"
            record.state = search.FAIL
            record.system_attrs["tapefit:error"] = error
        result.asks.append((record, job_spec, error))
        records.append(record)
        active += record.state == search.RUNNING
    result.finish = len(records) >= spec.trials and active == 0
    return result


def apply(session: Session, study: Study, revision: int, decided: Plan) -> bool:
    """Write a pass's plan, if the study is still at `revision` and running; True if written."""
    claimed = session.execute(
        update(Study)
        .where(Study.id == study.id, Study.revision == revision,
               Study.state == StudyState.running)
        .values(revision=revision + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not claimed:
        return False
    for number, state, value in decided.tells:
        mark(session, study_id=study.id, number=number, state=state, value=value)
    spec = StudyCreate.stored(study.spec)
    for record, job_spec, _error in decided.asks:
        job_id = None
        if job_spec is not None:
            job = jobs.submit_job(session=session, spec=spec.base.model_validate(job_spec))
            job.study_id, job.trial = study.id, record.number
            session.flush()
            job_id = job.id
        session.add(StudyTrial(
            study_id=study.id, number=record.number, job_id=job_id, state=record.state,
            params=record.params, system_attrs=record.system_attrs,
            finished_at=utcnow() if record.state != search.RUNNING else None,
        ))
    if decided.finish:
        session.execute(
            update(Study).where(Study.id == study.id)
            .values(state=StudyState.succeeded, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    session.flush()
    return True


def advance(session: Session, study: Study) -> bool:
    """Plan and write in one session (a new study's first trials, in its creating
    transaction); True when something was written."""
    spec = StudyCreate.stored(study.spec)
    decided = plan(spec, load_trials(session, study, spec))
    return bool(decided) and apply(session, study, study.revision, decided)


def drive(database: Database, study_id: int) -> bool:
    """One pass on one study: read, decide, write if no other driver acted meanwhile."""
    with database.session() as session:
        study = session.get(Study, study_id)
        if study is None or study.state != StudyState.running:
            return False
        spec = StudyCreate.stored(study.spec)
        revision = study.revision
        decided = plan(spec, load_trials(session, study, spec))
    if not decided:
        return False
    with database.session(write=True) as session:
        study = session.get(Study, study_id)
        written = study is not None and apply(session, study, revision, decided)
    if written:
        for record, _spec, error in decided.asks:
            if error:
                log.warning("study %s: trial %s: %s", study_id, record.number, error)
        if decided.finish:
            log.info("study %s: every trial has ended", study_id)
    return written


def running_studies(database: Database) -> list[int]:
    """The ids of the studies a driver has work on."""
    with database.session() as session:
        return list(session.scalars(
            select(Study.id).where(Study.state == StudyState.running).order_by(Study.id)
        ))


def drive_all(database: Database) -> int:
    """One pass on every running study; how many changed. A database error stops the pass
    (the caller waits it out); any other fault is one study's, logged, and the rest go on."""
    changed = 0
    for study_id in running_studies(database):
        try:
            changed += drive(database, study_id)
        except SQLAlchemyError:
            raise
        except Exception:
            log.exception("study %s: its pass failed", study_id)
    return changed


async def drive_forever(database: Database, interval: float) -> None:
    """The API's background driver, one pass over the running studies every `interval`."""
    while True:
        await asyncio.sleep(interval)
        current = asyncio.ensure_future(asyncio.to_thread(drive_all, database))
        try:
            await asyncio.shield(current)
        except asyncio.CancelledError:
            # A thread cannot be cancelled: let the pass end before the caller disposes of
            # the engine it uses.
            await asyncio.gather(current, return_exceptions=True)
            raise
        except OperationalError as exc:  # a busy database: the next pass will do
            log.warning("study pass skipped: %s", exc)
