"""Keys and finished jobs for the tenancy and deletion tests: a server with an admin token,
keys made through its API, and jobs taken through the worker's real lease functions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.queue import leases
from service.schemas import EpochRead

ADMIN_TOKEN = "admin-token-for-the-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@contextmanager
def secured_client(settings: Settings, **overrides: object) -> Iterator[TestClient]:
    """The API with an admin token (and `overrides`), on `settings`' migrated database."""
    secured = settings.model_copy(update={"api_token": SecretStr(ADMIN_TOKEN), **overrides})
    with TestClient(create_app(secured)) as client:
        yield client


@dataclass(frozen=True)
class Key:
    id: int
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_key(client: TestClient, name: str, **body: object) -> Key:
    response = client.post("/keys", json={"name": name, **body}, headers=ADMIN)
    assert response.status_code == 201, response.text
    created = response.json()
    return Key(id=created["id"], name=name, token=created["token"])


def run_to_success(database: Database, job_id: int, *, steps: int = 3,
                   model: bytes | None = None, accuracy: float = 0.9) -> bytes:
    """Claim `job_id` (it must be the next in the claim order), write `steps` loss rows and
    an epoch, and finish it with `model` (some bytes; the routes that only find or download
    a model never load it). Returns the model's bytes."""
    model = model if model is not None else f"model of job {job_id}".encode()
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w")
        assert lease is not None and lease.job_id == job_id, lease
        leases.start_job(session=session, lease=lease, total_steps=steps)
        leases.record_progress(session=session, lease=lease, rows=[
            {"step": s, "epoch": 0, "batch": s, "loss": 1.0, "accuracy": 0.5, "time": 0.1}
            for s in range(steps)
        ])
        leases.record_epoch(session=session, lease=lease, summary=EpochRead(
            epoch=0, train_loss=1.0, train_accuracy=0.5, test_loss=1.0,
            test_accuracy=accuracy, seconds=1.0))
        leases.finish_job(session=session, lease=lease, test_loss=1.0,
                          test_accuracy=accuracy, model=model)
    return model


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
