"""Two real trained models, made once per test session by the worker on the committed sample.

`good` (the first job) is the more accurate, `weak` (the second) the newer: `best` and `latest`
name different jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import jobs
from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.inference import ModelStore
from service.migrate import upgrade
from service.schemas import JobSpec, JobState
from tests.conftest import SAMPLE, make_settings

GOOD_SPEC = {
    "model": {"layers": [{"units": 128, "activation": "relu"},
                         {"units": 10, "activation": "softmax"}]},
    "optimizer": {"name": "rmsprop", "learning_rate": 0.003},
    "epochs": 2,
    "dataset": {"train_limit": 2000},
}
WEAK_SPEC = {
    "model": {"implementation": "naive",
              "layers": [{"units": 32, "activation": "relu"},
                         {"units": 10, "activation": "softmax"}]},
    "optimizer": {"name": "manual_sgd", "learning_rate": 0.1},
    "epochs": 2,
    "batch_size": 32,
    "dataset": {"train_limit": 500},
}


@dataclass(frozen=True)
class Trained:
    settings: Settings
    database: Database
    good: int
    weak: int
    accuracy: dict[int, float]
    x_test: np.ndarray  # (500, 28, 28) float32 in [0, 1]
    y_test: np.ndarray

    def model(self, job_id: int) -> tuple[str, bytes]:
        """The job's model as the database holds it: (sha256, bytes)."""
        with self.database.session() as session:
            artifact = jobs.model_artifact(session=session, job_id=job_id)
            return artifact.sha256, artifact.content

    def store(self, folder: Path, *job_ids: int, capacity: int = 2) -> tuple[ModelStore, list[str]]:
        """A model store in `folder` holding these jobs' models, and their hashes."""
        store, hashes = ModelStore(folder, capacity), []
        for job_id in job_ids:
            sha256, content = self.model(job_id)
            store.put(sha256, content)
            hashes.append(sha256)
        return store, hashes


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


def add_job(
    database: Database, state: JobState, *, accuracy: float | None = None, error: str | None = None
) -> int:
    """A job put straight into `state` (no worker, no model file): for name resolution tests."""
    with database.session(write=True) as session:
        job = jobs.submit_job(session=session, spec=JobSpec())
        job.state = state
        job.test_accuracy = accuracy
        job.error = error
        return job.id
