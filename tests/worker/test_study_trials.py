"""A study's trials run by a real worker on the committed sample: each epoch asks the pruner,
a pruned trial ends `pruned` at the epoch it reached with its rows and model, each ended
trial is told to the study in its end's transaction and the next one is queued at once."""

from __future__ import annotations

from sqlalchemy import select

from service.config import Settings
from service.db import Database
from service.models import Study, StudyTrial
from service.queue import history, jobs
from service.serving import catalog
from service.studies import studies
from service.studies.schemas import StudyCreate
from tests.helpers.settings import TINY_SPEC
from worker.main import Worker

# The grid's order (fixed by the seed) puts rmsprop first: it learns in one epoch, and the
# book's manual SGD at 1e-3 does not, so ASHA stops the manual SGD trials at epoch 1.
STUDY = {
    "base": {**TINY_SPEC, "epochs": 3, "validation_split": 0.2,
             "optimizer": {"name": "rmsprop", "learning_rate": 0.001}},
    "space": {"optimizer.name": {"choices": ["rmsprop", "manual_sgd", "sgd"]}},
    "sampler": "grid", "pruner": "asha", "trials": 3, "parallel": 1, "seed": 1,
}


def test_a_study_runs_prunes_and_picks_the_best(settings: Settings, database: Database) -> None:
    with database.session(write=True) as session:
        study_id = studies.create_study(session=session,
                                        spec=StudyCreate.model_validate(STUDY)).id
    ran = 0
    with Worker(settings) as worker:
        while worker.run_once():  # the worker queues each next trial as the last one ends
            ran += 1
    assert ran == 3
    with database.session() as session:
        study = session.get(Study, study_id)
        view = studies.describe(session=session, study=study)
        rows = session.scalars(select(StudyTrial).where(StudyTrial.study_id == study_id)
                               .order_by(StudyTrial.number)).all()
        assert view.state == "succeeded"
        names = [t.params["optimizer.name"] for t in view.trials]
        assert names[0] == "rmsprop", names  # the seed's grid order, which the test relies on
        states = {t.params["optimizer.name"]: (t.state, t.epochs_run) for t in view.trials}
        assert states["rmsprop"] == ("succeeded", 3)
        assert states["manual_sgd"] == ("pruned", 1)
        assert [row.state for row in rows] == ["complete", "pruned", rows[2].state]
        assert view.best.params == {"optimizer.name": "rmsprop"}
        # A pruned trial keeps its rows and its model, at the epoch it reached.
        pruned = next(t for t in view.trials if t.state == "pruned")
        job = jobs.describe(jobs.get_job(session=session, job_id=pruned.job_id))
        assert job.progress.epoch == 1 and job.finished_at is not None
        assert len(history.epoch_rows(session=session, job_id=pruned.job_id)) == 1
        assert jobs.model_artifact(session=session, job_id=pruned.job_id) is not None
        assert catalog.resolve(session=session, name=str(pruned.job_id)).ready
        # The study's alias serves its best trial.
        assert catalog.resolve(session=session, name=f"study-{study_id}").job_id == \
            view.best.job_id
