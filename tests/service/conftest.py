"""Two real trained models, made once per test session by the worker on the committed sample.

`good` (the first job) is the more accurate, `weak` (the second) the newer: `best` and `latest`
name different jobs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.db import Database
from service.migrate import upgrade
from service.queue import jobs
from service.schemas import JobSpec, JobState
from tests.helpers.serving import GOOD_SPEC, WEAK_SPEC, Trained
from tests.helpers.settings import SAMPLE, make_settings


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    from worker.main import Worker  # TensorFlow loads here, once, for the serving tests

    settings = make_settings(tmp_path_factory.mktemp("serving") / "data")
    upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    ids = []
    for spec in (GOOD_SPEC, WEAK_SPEC):
        with database.session(write=True) as session:
            ids.append(jobs.submit_job(session=session, spec=JobSpec.model_validate(spec)).id)
        assert Worker(settings).run_once()
    accuracy = {}
    with database.session() as session:
        for job_id in ids:
            job = jobs.get_job(session=session, job_id=job_id)
            assert job.state == JobState.succeeded, job.error
            accuracy[job_id] = job.test_accuracy
    good, weak = ids
    assert accuracy[good] > 0.8 and accuracy[weak] < accuracy[good], accuracy
    sample = np.load(SAMPLE)
    yield Trained(
        settings=settings,
        database=database,
        good=good,
        weak=weak,
        accuracy=accuracy,
        x_test=sample["x_test"].astype(np.float32) / 255,
        y_test=sample["y_test"],
    )
    database.dispose()


@pytest.fixture(scope="module")
def served(trained: Trained) -> Iterator[TestClient]:
    """The API on the trained models' data dir."""
    with TestClient(create_app(trained.settings)) as client:
        yield client
