"""Readiness: GET /readyz and a queued job's view say whether any worker is alive to run jobs,
from the heartbeat rows that workers keep fresh (idle or training)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import delete, select, update

from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.models import WorkerHeartbeat, utcnow
from service.queue import leases, workers
from service.schemas import JobState
from tests.helpers.settings import make_settings


@pytest.fixture(autouse=True)
def no_workers(database: Database) -> Iterator[None]:
    """The PostgreSQL scratch database is shared by the session: no worker rows before or
    after."""
    with database.session(write=True) as session:
        session.execute(delete(WorkerHeartbeat))
    yield
    with database.session(write=True) as session:
        session.execute(delete(WorkerHeartbeat))


def beat(database: Database, worker_id: str = "host:1", lease_timeout: float = 30) -> None:
    with database.session(write=True) as session:
        workers.beat(session=session, worker_id=worker_id, hostname="host", pid=1,
                     lease_timeout=lease_timeout)


def test_no_live_worker_is_503_saying_so(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready" and body["workers_alive"] == 0
    assert "no worker is alive" in body["detail"]
    # Liveness is another question: the API itself answers.
    assert client.get("/healthz").status_code == 200


def test_a_fresh_heartbeat_row_makes_it_ready(client: TestClient, database: Database) -> None:
    beat(database, "a:1")
    beat(database, "b:2")
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "workers_alive": 2, "detail": None}


def test_a_row_past_its_lease_timeout_does_not_count(
    client: TestClient, database: Database
) -> None:
    beat(database, "gone:1")
    beat(database, "alive:2")
    with database.session(write=True) as session:
        session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.id == "gone:1")
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get("/readyz").json()["workers_alive"] == 1
    with database.session(write=True) as session:
        workers.leave(session=session, worker_id="alive:2")
    assert client.get("/readyz").status_code == 503


def test_a_database_that_does_not_answer_is_503_saying_so(tmp_path: Path) -> None:
    (tmp_path / "file").touch()  # a file where the database's folder should be
    settings = make_settings(tmp_path / "data",
                             database_url=f"sqlite:///{tmp_path}/file/tapefit.db")
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["workers_alive"] is None
    assert "the database does not answer" in response.json()["detail"]


def test_readyz_needs_no_token(settings: Settings, database: Database) -> None:
    protected = settings.model_copy(update={"api_token": SecretStr("a-token-of-16-chars-or-more")})
    beat(database)
    with TestClient(create_app(protected)) as client:
        assert client.get("/jobs").status_code == 401
        assert client.get("/readyz").status_code == 200


def test_a_queued_job_says_when_no_worker_is_alive(
    client: TestClient, database: Database
) -> None:
    job = client.post("/jobs", json={}).json()
    assert job["workers_alive"] == 0
    assert "no worker is alive to run it" in job["note"]
    assert client.get(f"/jobs/{job['id']}").json()["note"] == job["note"]

    beat(database)
    view = client.get(f"/jobs/{job['id']}").json()
    assert view["workers_alive"] == 1 and view["note"] is None

    # Only a queued job carries it: a running one has its worker.
    with database.session(write=True) as session:
        leases.claim_job(session=session, worker_id="host:1")
    with database.session(write=True) as session:
        workers.leave(session=session, worker_id="host:1")
    view = client.get(f"/jobs/{job['id']}").json()
    assert view["state"] == JobState.running
    assert view["workers_alive"] is None and view["note"] is None


def rows(database: Database) -> list[WorkerHeartbeat]:
    with database.session() as session:
        return list(session.scalars(select(WorkerHeartbeat)))


def test_an_idle_worker_keeps_its_row_fresh_and_removes_it_when_it_stops(
    settings: Settings, database: Database
) -> None:
    from worker.main import Worker

    settings = settings.model_copy(update={"heartbeat_interval": 0.05, "lease_timeout": 1.0})
    with Worker(settings, worker_id="idle:7") as worker:
        thread = threading.Thread(target=worker.run_forever)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not rows(database) and time.monotonic() < deadline:
                time.sleep(0.02)
            (first,) = rows(database)
            assert first.id == "idle:7" and first.expires_at > first.heartbeat_at
            while rows(database)[0].heartbeat_at == first.heartbeat_at:  # refreshed, idle
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            worker.stop.set()
            thread.join()
    assert rows(database) == []


def test_a_running_jobs_heartbeat_refreshes_its_workers_row(
    client: TestClient, database: Database
) -> None:
    from worker.recorder import Heartbeat, Presence

    client.post("/jobs", json={})
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="busy:9")
    assert lease is not None
    presence = Presence(database, "busy:9", lease_timeout=30)
    with Heartbeat(database, lease, 0.02, presence=presence):
        deadline = time.monotonic() + 30
        while not rows(database):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert client.get("/readyz").json()["workers_alive"] == 1
