"""Trained models for the serving tests: what the `trained` fixture (tests/service/conftest.py)
makes, and jobs put straight into a state for name resolution."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.config import Settings
from service.db import Database
from service.queue import jobs
from service.schemas import JobSpec, JobState
from service.serving.store import ModelStore

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
