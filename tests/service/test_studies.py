"""Studies through the API and the driver, on SQLite and PostgreSQL: the bad-input table, the
trials queued as jobs, tells and asks, one driver at a time, cancel, the `study-{id}` alias,
pruning decisions and the event stream. The trials' training is played here by writing each
job's end and epochs as a worker would (the real workers run in tests/e2e/test_studies.py)."""

from __future__ import annotations

import copy
import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from service.db import Database
from service.models import EpochSummary, Job, Study, StudyTrial, utcnow
from service.schemas import JobState
from service.serving import catalog
from service.studies import driver, pruning, search, studies
from service.studies.schemas import StudyCreate
from service.studies.trials import load_trials

BASE = {"epochs": 4, "validation_split": 0.1, "batch_size": 100,
        "dataset": {"train_limit": 500, "test_limit": 200}}
SPACE = {"optimizer.learning_rate": {"low": 1e-4, "high": 0.3, "log": True},
         "model.layers.0.units": {"choices": [16, 32, 64, 128]},
         "optimizer.name": {"choices": ["sgd", "rmsprop", "adam"]}}
STUDY = {"name": "lr-and-width", "base": BASE, "space": SPACE,
         "objective": {"metric": "val_accuracy", "direction": "maximize"},
         "sampler": "tpe", "pruner": "asha", "trials": 6, "parallel": 2, "seed": 0}


def with_(**changes: object) -> dict:
    body = copy.deepcopy(STUDY)
    body.update(changes)
    return body


BAD_INPUT = [
    # (what is wrong, body, words the 422's message must carry)
    ("a path the spec does not have", with_(space={"optimizer.lr": {"low": 0.1, "high": 1}}),
     ["space", "optimizer.lr", "no field 'lr'"]),
    ("a list index past the end", with_(space={"model.layers.5.units": {"choices": [8]}}),
     ["space", "model.layers.5.units", "no index 5"]),
    ("a range outside the field's bounds",
     with_(space={"optimizer.learning_rate": {"low": 0.1, "high": 20}}),
     ["space", "optimizer.learning_rate high 20", "less than or equal to 10"]),
    ("a choice the field refuses", with_(space={"optimizer.name": {"choices": ["sgd", "lbfgs"]}}),
     ["space", "optimizer.name choice 'lbfgs'"]),
    ("a choice the model refuses (the last layer must have 10 units)",
     with_(space={"model.layers.1.units": {"choices": [10, 12]}}),
     ["space", "model.layers.1.units choice 12", "10 units"]),
    ("a fractional range on a whole-number field",
     with_(space={"epochs": {"low": 1.5, "high": 3}}), ["space", "epochs low 1.5"]),
    ("trials over 1,000", with_(trials=1001), ["trials", "1000"]),
    ("parallel over trials", with_(trials=4, parallel=5), ["parallel", "cannot exceed trials"]),
    ("an objective that needs a validation split the base lacks",
     with_(base={"epochs": 2}), ["objective", "val_accuracy", "validation_split"]),
    ("a grid over a continuous range", with_(sampler="grid"),
     ["optimizer.learning_rate", "grid sampler needs choices"]),
    ("low not below high", with_(space={"epochs": {"low": 3, "high": 3}}), ["low (3)"]),
]


@pytest.mark.parametrize(("case", "body", "words"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_a_422_naming_it_and_stores_nothing(
    client: TestClient, case: str, body: dict, words: list[str]
) -> None:
    response = client.post("/studies", json=body)
    assert response.status_code == 422, (case, response.text)
    message = response.json()["message"]
    for word in words:
        assert word in message, (case, message)
    assert client.get("/studies").json()["total"] == 0
    assert client.get("/jobs").json()["total"] == 0


def test_a_study_queues_its_first_trials_as_ordinary_jobs(client: TestClient) -> None:
    response = client.post("/studies", json=STUDY)
    assert response.status_code == 201, response.text
    study = response.json()
    assert response.headers["Location"] == f"/studies/{study['id']}"
    assert study["state"] == "running" and study["best"] is None
    assert [t["number"] for t in study["trials"]] == [0, 1]  # parallel caps them
    for trial in study["trials"]:
        job = client.get(f"/jobs/{trial['job_id']}").json()
        assert job["state"] == "queued"
        assert (job["study_id"], job["trial"]) == (study["id"], trial["number"])
        # The sampler's params are in the job's spec, the rest is the base.
        params = trial["params"]
        assert job["spec"]["optimizer"]["learning_rate"] == params["optimizer.learning_rate"]
        assert job["spec"]["model"]["layers"][0]["units"] == params["model.layers.0.units"]
        assert job["spec"]["optimizer"]["name"] == params["optimizer.name"]
        assert job["spec"]["validation_split"] == 0.1 and job["spec"]["epochs"] == 4
        assert 1e-4 <= params["optimizer.learning_rate"] <= 0.3
    listed = client.get("/studies").json()
    assert listed["total"] == 1
    assert listed["items"][0]["trials"] == 2 and listed["items"][0]["trials_planned"] == 6
    assert client.get(f"/studies/{study['id']}").json()["trials"] == study["trials"]


def end_trial(database: Database, job_id: int, state: JobState, values: list[float]) -> None:
    """Play a worker: the job's epochs (val_accuracy = each value) and its end state."""
    with database.session(write=True) as session:
        for epoch, value in enumerate(values):
            session.add(EpochSummary(job_id=job_id, epoch=epoch, train_loss=1.0,
                                     train_accuracy=0.5, test_loss=1.0, test_accuracy=0.5,
                                     seconds=0.1, val_loss=1 - value, val_accuracy=value))
        session.execute(update(Job).where(Job.id == job_id).values(
            state=state, finished_at=utcnow(), epoch=len(values)))


def trial_jobs(database: Database, study_id: int) -> dict[int, tuple[int | None, str]]:
    with database.session() as session:
        return {row.number: (row.job_id, row.state) for row in session.scalars(
            select(StudyTrial).where(StudyTrial.study_id == study_id))}


def make_study(database: Database, **changes: object) -> int:
    with database.session(write=True) as session:
        return studies.create_study(session=session,
                                    spec=StudyCreate.model_validate(with_(**changes))).id


def test_the_driver_tells_ended_trials_asks_the_next_and_ends_with_the_best(
    database: Database,
) -> None:
    study_id = make_study(database, trials=4, parallel=2)
    assert not driver.drive(database, study_id)  # both trials still queued: nothing to do
    values = {0: 0.61, 1: 0.83, 2: 0.70, 3: 0.42}
    for number in range(4):
        job_id, _ = trial_jobs(database, study_id)[number]
        end_trial(database, job_id, JobState.succeeded, [values[number] - 0.1, values[number]])
        driver.drive(database, study_id)
        made = trial_jobs(database, study_id)
        assert made[number][1] == search.COMPLETE
        assert len(made) == min(4, number + 3)  # the freed slot is filled at once
    with database.session() as session:
        study = session.get(Study, study_id)
        assert study.state == "succeeded" and study.finished_at is not None
        view = studies.describe(session=session, study=study)
        assert [t.value for t in view.trials] == [values[n] for n in range(4)]
        assert view.best.number == 1 and view.best.value == values[1]
        # The alias names the best trial's job wherever latest and best work.
        ref = catalog.find_model(session=session, name=f"study-{study_id}")
        assert ref.job_id == view.best.job_id
    assert not driver.drive(database, study_id)  # a finished study is left alone


def test_a_failed_or_cancelled_trial_is_told_failed_and_not_replaced(database: Database) -> None:
    study_id = make_study(database, trials=3, parallel=1)
    job_id, _ = trial_jobs(database, study_id)[0]
    end_trial(database, job_id, JobState.failed, [])
    driver.drive(database, study_id)
    job_id, _ = trial_jobs(database, study_id)[1]
    end_trial(database, job_id, JobState.cancelled, [0.5])
    driver.drive(database, study_id)
    made = trial_jobs(database, study_id)
    assert [made[n][1] for n in range(3)] == [search.FAIL, search.FAIL, search.RUNNING]
    with database.session() as session:
        with pytest.raises(catalog.ModelNotFound, match="study-"):
            catalog.find_model(session=session, name=f"study-{study_id}")


def test_a_requeued_trial_goes_on(database: Database) -> None:
    study_id = make_study(database, trials=2, parallel=1)
    job_id, _ = trial_jobs(database, study_id)[0]
    with database.session(write=True) as session:  # a lost worker's job, back in the queue
        session.execute(update(Job).where(Job.id == job_id).values(state=JobState.queued,
                                                                    attempts=1))
    assert not driver.drive(database, study_id)
    assert trial_jobs(database, study_id) == {0: (job_id, search.RUNNING)}


def test_only_one_driver_acts_on_a_study_at_a_time(database: Database) -> None:
    study_id = make_study(database, trials=4, parallel=1)
    job_id, _ = trial_jobs(database, study_id)[0]
    end_trial(database, job_id, JobState.succeeded, [0.5])
    # Two drivers read the same revision and decide the same next trial...
    plans = []
    for _ in range(2):
        with database.session() as session:
            study = session.get(Study, study_id)
            spec = StudyCreate.model_validate(study.spec)
            plans.append((study.revision, driver.plan(spec, load_trials(session, study, spec))))
    # ...and only the first write lands: the study has one more trial, not two.
    results = []
    for revision, decided in plans:
        with database.session(write=True) as session:
            results.append(driver.apply(session, session.get(Study, study_id), revision, decided))
    assert results == [True, False]
    assert sorted(trial_jobs(database, study_id)) == [0, 1]


def test_cancel_stops_the_study_and_its_trials_then_409(client: TestClient) -> None:
    study = client.post("/studies", json=STUDY).json()
    response = client.post(f"/studies/{study['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert {t["state"] for t in response.json()["trials"]} == {"cancelled"}
    again = client.post(f"/studies/{study['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["message"]


@pytest.mark.parametrize("path", ["/studies/999", "/studies/x", "/studies/01",
                                  "/studies/999/cancel", "/studies/999/events"])
def test_unknown_studies_are_404(client: TestClient, path: str) -> None:
    method = "POST" if path.endswith("cancel") else "GET"
    assert client.request(method, path).status_code == 404


def test_the_study_alias_is_404_until_a_trial_completes(client: TestClient) -> None:
    study = client.post("/studies", json=STUDY).json()
    response = client.get(f"/jobs/study-{study['id']}/model")
    assert response.status_code == 404
    assert f"study-{study['id']}" in response.json()["message"]
    assert client.get("/v1/models/study-999").status_code == 404


def report(database: Database, job_id: int, values: list[float]) -> None:
    with database.session(write=True) as session:
        for epoch, value in enumerate(values):
            session.merge(EpochSummary(job_id=job_id, epoch=epoch, train_loss=1.0,
                                       train_accuracy=0.5, test_loss=1.0, test_accuracy=0.5,
                                       seconds=0.1, val_loss=1 - value, val_accuracy=value))


def test_asha_prunes_a_trial_behind_the_others_at_a_rung_and_keeps_its_notes(
    database: Database,
) -> None:
    study_id = make_study(database, trials=6, parallel=6)
    made = trial_jobs(database, study_id)
    # Trials 0-2 reach the first rung (1 epoch) well; each is asked as it reports.
    for number, value in [(0, 0.90), (1, 0.91), (2, 0.92)]:
        report(database, made[number][0], [value])
        assert not pruning.should_prune(database, made[number][0])
    # Trial 3 is far behind them at that rung: pruned.
    report(database, made[3][0], [0.10])
    assert pruning.should_prune(database, made[3][0])
    with database.session() as session:
        attrs = session.scalar(select(StudyTrial.system_attrs).where(
            StudyTrial.study_id == study_id, StudyTrial.number == 3))
    assert attrs["completed_rung_0"] == pytest.approx(0.10)


def test_no_pruner_never_prunes(database: Database) -> None:
    study_id = make_study(database, trials=2, parallel=2, pruner="none")
    made = trial_jobs(database, study_id)
    report(database, made[0][0], [0.9])
    report(database, made[1][0], [0.1])
    assert not pruning.should_prune(database, made[1][0])


def test_a_pruned_trial_is_told_pruned_with_its_last_value(database: Database) -> None:
    study_id = make_study(database, trials=2, parallel=2)
    made = trial_jobs(database, study_id)
    end_trial(database, made[0][0], JobState.pruned, [0.3])
    end_trial(database, made[1][0], JobState.succeeded, [0.2, 0.25])
    driver.drive(database, study_id)
    with database.session() as session:
        view = studies.describe(session=session, study=session.get(Study, study_id))
    assert [(t.state, t.value, t.epochs_run) for t in view.trials] == [
        ("pruned", 0.3, 1), ("succeeded", 0.25, 2)]
    assert view.best.number == 1  # a pruned trial's partial value is never the best
    assert view.state == "succeeded" and view.epochs_run == 3


def test_the_grid_sampler_visits_each_point_once(database: Database) -> None:
    study_id = make_study(database, sampler="grid", trials=4, parallel=4, space={
        "model.layers.0.units": {"choices": [16, 32]}, "epochs": {"low": 1, "high": 2}})
    with database.session() as session:
        params = [json.dumps(row.params, sort_keys=True) for row in session.scalars(
            select(StudyTrial).where(StudyTrial.study_id == study_id))]
    assert len(set(params)) == 4


def test_the_event_stream_tells_trials_and_the_best_then_ends(
    client: TestClient, database: Database
) -> None:
    study = client.post("/studies", json=with_(trials=2, parallel=2)).json()
    for trial, values in zip(study["trials"], ([0.4, 0.5], [0.3, 0.6]), strict=True):
        end_trial(database, trial["job_id"], JobState.succeeded, values)
    driver.drive(database, study["id"])
    with client.stream("GET", f"/studies/{study['id']}/events") as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    kinds = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event:")]
    assert kinds.count("trial_started") == 2 and kinds.count("trial_ended") == 2
    assert kinds.count("trial_reported") == 2 and kinds[-1] == "state"
    best = json.loads(text.split("event: best\ndata: ")[1].split("\n")[0])
    assert best["number"] == 1 and best["value"] == 0.6


@pytest.mark.parametrize(("spec", "words"), [
    ({"early_stopping": {"monitor": "val_loss"}}, ["early_stopping.monitor", "validation_split"]),
    ({"optimizer": {"schedule": {"type": "step", "boundaries": [10], "values": [0.1]}}},
     ["optimizer.schedule"]),
    ({"optimizer": {"schedule": {"type": "step", "boundaries": [10, 5], "values": [1, 2, 3]}}},
     ["increasing order"]),
    ({"validation_split": 0.6}, ["validation_split", "0.5"]),
    ({"optimizer": {"clipnorm": 0}}, ["clipnorm"]),
])
def test_job_controls_that_cannot_work_are_a_422(
    client: TestClient, spec: dict, words: list[str]
) -> None:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    for word in words:
        assert word in response.json()["message"], response.json()["message"]
    assert client.get("/jobs").json()["total"] == 0


def test_the_median_pruner_stops_a_trial_below_the_completed_ones(database: Database) -> None:
    study_id = make_study(database, trials=4, parallel=2, pruner="median")
    made = trial_jobs(database, study_id)
    end_trial(database, made[0][0], JobState.succeeded, [0.8, 0.9])
    driver.drive(database, study_id)
    report(database, made[1][0], [0.85])
    assert not pruning.should_prune(database, made[1][0])  # above the median at epoch 1
    made = trial_jobs(database, study_id)
    report(database, made[2][0], [0.2])
    assert pruning.should_prune(database, made[2][0])
