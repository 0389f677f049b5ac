"""One error table: every error answers with `message` natively and `{"error"}` under the
model-serving protocols, each domain error with the status its table row gives."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.errors import TABLE, answer_for
from service.config import Settings
from service.db import Database
from service.queue.jobs import JobConflict, JobNotFound
from service.schemas import JobState
from service.serving.catalog import ModelNotReady
from tests.helpers.serving import add_job


def test_a_job_without_a_model_is_409_natively_and_404_to_the_protocols(
    client: TestClient, database: Database
) -> None:
    job_id = add_job(database, JobState.running)
    native = client.post(f"/jobs/{job_id}/predict", json={"instances": [[0.0] * 784]})
    assert native.status_code == 409
    assert native.json()["message"] == f"job {job_id} is still running: it has no trained model"
    tf_serving = client.post(f"/v1/models/{job_id}:predict", json={"instances": [[0.0] * 784]})
    assert tf_serving.status_code == 404
    assert tf_serving.json() == {"error": native.json()["message"]}
    kserve = client.get(f"/v2/models/{job_id}")
    assert kserve.status_code == 404 and set(kserve.json()) == {"error"}


NATIVE_ERRORS = [
    ("GET", "/jobs/999", None, None, 404),
    ("GET", "/nothing/here", None, None, 404),
    ("DELETE", "/jobs", None, None, 405),
    ("POST", "/jobs", b'{"epochs": 0}', "application/json", 422),
    ("POST", "/jobs", b"epochs=3", "text/plain", 415),
    ("POST", "/jobs", b"x" * (2 * 1024 * 1024), "application/json", 413),
    ("GET", "/jobs/1/events?last_event_id=abc", None, None, 422),
]


@pytest.mark.parametrize(("method", "path", "body", "media_type", "status"), NATIVE_ERRORS,
                         ids=[f"{m} {p[:30]} {s}" for m, p, _, _, s in NATIVE_ERRORS])
def test_every_native_error_names_its_problem_in_message(
    settings: Settings, database: Database, method: str, path: str, body: bytes | None,
    media_type: str | None, status: int,
) -> None:
    small = settings.model_copy(update={"max_request_bytes": 1024 * 1024})
    with TestClient(create_app(small)) as client:
        client.post("/jobs")  # job 1 exists
        headers = {"Content-Type": media_type} if media_type else {}
        response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    payload = response.json()
    assert isinstance(payload["message"], str) and payload["message"], payload
    assert "detail" in payload


def test_a_conflict_carries_a_message(client: TestClient) -> None:
    job_id = client.post("/jobs").json()["id"]
    client.post(f"/jobs/{job_id}/cancel")
    again = client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["message"] == f"job {job_id} is already cancelled"


def test_the_table_finds_a_row_for_subclasses() -> None:
    assert answer_for(ModelNotReady(3, "queued", None)).native == 409  # a ModelUnavailable
    assert answer_for(JobNotFound(3)) is TABLE[JobNotFound]
    assert answer_for(JobConflict("x")).protocol == 409
    assert answer_for(KeyError("x")) is None
