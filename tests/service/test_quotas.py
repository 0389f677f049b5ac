"""Quotas: past max_queued a submission is 429 with Retry-After naming the quota; past
max_running nothing is refused, the claim holds the rest; a job's loss rows are bounded."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.queue import jobs, leases
from service.schemas import JobSpec
from tests.helpers.tenancy import ADMIN, make_key, secured_client


@pytest.fixture
def secured(settings: Settings, database: Database) -> Iterator[TestClient]:
    with secured_client(settings) as client:
        yield client


def test_past_max_queued_is_429_with_retry_after_naming_the_quota(
    secured: TestClient, database: Database
) -> None:
    alice = make_key(secured, "alice", max_queued=2)
    first, second = (secured.post("/jobs", headers=alice.headers, json={}) for _ in range(2))
    assert first.status_code == second.status_code == 201
    third = secured.post("/jobs", headers=alice.headers, json={})
    assert third.status_code == 429
    assert third.headers["Retry-After"] == "30"
    assert third.json()["message"] == (
        "key 'alice' has 2 queued jobs, its max_queued quota (2): wait for one to start, "
        "or cancel one")
    assert secured.get("/jobs", headers=alice.headers).json()["total"] == 2  # nothing stored
    # A retry of an accepted submission is not a new job: replayed, not refused.
    keyed = {"Idempotency-Key": "k"}
    secured.post(f"/jobs/{first.json()['id']}/cancel", headers=alice.headers)
    assert secured.post("/jobs", headers=alice.headers | keyed, json={}).status_code == 201
    assert secured.post("/jobs", headers=alice.headers | keyed, json={}).status_code == 200
    # Once one starts, there is room again; others and the admin are not bound by it.
    with database.session(write=True) as session:
        leases.claim_job(session=session, worker_id="w")
    assert secured.post("/jobs", headers=alice.headers, json={}).status_code == 201
    assert secured.post("/jobs", headers=alice.headers, json={}).status_code == 429
    assert secured.post("/jobs", headers=ADMIN, json={}).status_code == 201


def test_max_running_queues_more_and_holds_them(secured: TestClient,
                                                database: Database) -> None:
    alice = make_key(secured, "alice", max_running=1)
    ids = [secured.post("/jobs", headers=alice.headers, json={}).json()["id"] for _ in range(3)]
    with database.session(write=True) as session:
        assert leases.claim_job(session=session, worker_id="w").job_id == ids[0]
    with database.session(write=True) as session:
        assert leases.claim_job(session=session, worker_id="w") is None
    waiting = secured.get(f"/jobs/{ids[1]}", headers=alice.headers).json()
    assert waiting["state"] == "queued" and waiting["queue_position"] is None
    assert "max_running quota is 1" in waiting["note"]


def test_concurrent_submissions_cannot_overrun_max_queued(
    secured: TestClient, settings: Settings
) -> None:
    alice = make_key(secured, "alice", max_queued=3)
    start = threading.Barrier(8)
    statuses: list[int] = []

    def submit() -> None:
        start.wait()
        statuses.append(secured.post("/jobs", headers=alice.headers, json={}).status_code)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 3 + [429] * 5
    assert secured.get("/jobs", headers=alice.headers).json()["total"] == 3


@pytest.mark.parametrize("spec, rows", [
    ({"epochs": 100, "batch_size": 1}, 6_000_000),
    ({"epochs": 17, "batch_size": 1}, 1_020_000),
])
def test_a_job_past_the_row_bound_is_422_naming_the_number_and_the_setting(
    client: TestClient, spec: dict, rows: int
) -> None:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422
    message = response.json()["message"]
    assert f"{rows:,} loss rows" in message and "TAPEFIT_MAX_JOB_ROWS (1,000,000)" in message
    assert client.get("/jobs").json()["total"] == 0


def test_the_row_bound_counts_batches_per_epoch_and_is_a_setting(settings: Settings,
                                                                 database: Database) -> None:
    assert jobs.loss_rows(JobSpec(epochs=16, batch_size=1)) == 960_000
    assert jobs.loss_rows(JobSpec(epochs=3, batch_size=128,
                                  dataset={"train_limit": 1000})) == 3 * 8
    at_limit = {"epochs": 16, "batch_size": 1}
    with TestClient(create_app(settings)) as c:
        assert c.post("/jobs", json=at_limit).status_code == 201
    small = settings.model_copy(update={"max_job_rows": 100})
    with TestClient(create_app(small)) as c:
        response = c.post("/jobs", json={"epochs": 2, "dataset": {"train_limit": 6401}})
        assert response.status_code == 422
        assert "would write 102 loss rows (2 epochs x 51 batches)" in response.json()["message"]
        assert "TAPEFIT_MAX_JOB_ROWS (100)" in response.json()["message"]
        assert c.post("/jobs", json={"epochs": 2, "dataset": {"train_limit": 6401},
                                     "batch_size": 256}).status_code == 201
