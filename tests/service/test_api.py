"""Every endpoint, through httpx (FastAPI's TestClient), on a real migrated SQLite file."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.db import Database
from service.queue import jobs, leases
from service.schemas import EpochRead, JobSpec


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("body", [None, {}])
def test_submit_fills_in_the_books_defaults(client: TestClient, body: dict | None) -> None:
    response = client.post("/jobs", json=body)
    assert response.status_code == 201
    job = response.json()
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["spec"] == JobSpec().model_dump(mode="json")
    assert job["spec"]["model"]["layers"] == [
        {"type": "dense", "units": 512, "activation": "relu"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    assert (job["spec"]["optimizer"]["name"], job["spec"]["epochs"]) == ("rmsprop", 5)
    assert job["progress"] == {
        "epoch": 0, "epochs": 5, "step": 0, "total_steps": None, "fraction": 0.0
    }
    assert client.get(f"/jobs/{job['id']}").json() == job


def test_a_submitted_job_is_committed_when_the_201_arrives(
    client: TestClient, database: Database
) -> None:
    job_id = client.post("/jobs", json={"epochs": 2}).json()["id"]
    with database.session() as session:
        assert jobs.get_job(session=session, job_id=job_id).spec["epochs"] == 2


BAD_SPECS = [
    ({"epochs": 0}, "epochs"),
    ({"epochs": 101}, "epochs"),
    ({"epochs": "five"}, "epochs"),
    ({"epochs": 2.5}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 60_001}, "batch_size"),
    ({"seed": -1}, "seed"),
    ({"colour": "blue"}, "colour"),
    ({"model": {"implementation": "pytorch"}}, "model.implementation"),
    ({"model": {"layers": []}}, "model.layers"),
    ({"model": {"layers": [{"units": 64}] * 32 + [{"units": 10}]}}, "model.layers"),
    ({"model": {"layers": [{"units": 5}]}}, "model.layers"),
    ({"model": {"layers": [{"units": 4097}, {"units": 10}]}}, "model.layers.0.dense.units"),
    ({"model": {"layers": [{"units": 4096}] * 3 + [{"units": 10}]}}, "model.layers"),
    ({"model": {"layers": [{"units": 10, "activation": "gelu"}]}},
     "model.layers.0.dense.activation"),
    ({"model": {"layers": [{"units": 10, "dropout": 0.5}]}}, "model.layers.0.dense.dropout"),
    ({"optimizer": {"name": "lbfgs"}}, "optimizer.name"),
    ({"optimizer": {"learning_rate": 0}}, "optimizer.learning_rate"),
    ({"optimizer": {"learning_rate": 10.5}}, "optimizer.learning_rate"),
    ({"optimizer": {"name": "adam", "momentum": 0.9}}, "optimizer"),
    ({"optimizer": {"name": "momentum", "momentum": 1.0}}, "optimizer.momentum"),
    ({"dataset": {"name": "cifar10"}}, "dataset.name"),
    ({"dataset": {"train_limit": 0}}, "dataset.train_limit"),
    ({"dataset": {"test_limit": 10_001}}, "dataset.test_limit"),
    # JSON's true is not the number 1, nor 1.0 a whole number, nor 1 a switch.
    ({"epochs": True}, "epochs"),
    ({"batch_size": 1.0}, "batch_size"),
    ({"seed": False}, "seed"),
    ({"model": {"layers": [{"units": True}, {"units": 10}]}}, "model.layers.0.dense.units"),
    ({"optimizer": {"learning_rate": True}}, "optimizer.learning_rate"),
    ({"dataset": {"test_limit": True}}, "dataset.test_limit"),
    ({"shuffle": 1}, "shuffle"),
]


@pytest.mark.parametrize(("body", "field"), BAD_SPECS, ids=[f for _, f in BAD_SPECS])
def test_a_bad_spec_is_a_422_that_names_the_field(
    client: TestClient, body: dict, field: str
) -> None:
    response = client.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(f"{field}:"), response.json()
    assert client.get("/jobs").json()["total"] == 0  # nothing was queued


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(client: TestClient, literal: str) -> None:
    response = client.post(
        "/jobs",
        content=f'{{"optimizer": {{"learning_rate": {literal}}}}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["message"].startswith("optimizer.learning_rate:")


def test_invalid_json_is_a_422(client: TestClient) -> None:
    response = client.post(
        "/jobs", content=b'{"epochs": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


def test_list_is_newest_first_with_state_filter_and_pagination(client: TestClient) -> None:
    ids = [client.post("/jobs").json()["id"] for _ in range(3)]
    client.post(f"/jobs/{ids[1]}/cancel")
    page = client.get("/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in page["items"]] == [ids[2], ids[1]]
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    assert [j["id"] for j in client.get("/jobs", params={"offset": 2}).json()["items"]] == [ids[0]]
    cancelled = client.get("/jobs", params={"state": "cancelled"}).json()
    assert [job["id"] for job in cancelled["items"]] == [ids[1]]
    assert client.get("/jobs", params={"state": "lost"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


@pytest.mark.parametrize(
    "path", ["/jobs/999", "/jobs/abc", "/jobs/-1", "/jobs/1e3", "/jobs/99999999999999999999999"]
)
def test_unknown_ids_are_404(client: TestClient, path: str) -> None:
    for suffix, method in [("", "GET"), ("/metrics", "GET"), ("/epochs", "GET"),
                           ("/cancel", "POST")]:
        response = client.request(method, path + suffix)
        assert response.status_code == 404, (path + suffix, response.text)


def test_cancel_a_queued_job_ends_it_and_a_second_cancel_is_409(client: TestClient) -> None:
    job_id = client.post("/jobs").json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert response.json()["finished_at"] is not None
    second = client.post(f"/jobs/{job_id}/cancel")
    assert second.status_code == 409
    assert "already cancelled" in second.json()["detail"]


def test_cancel_a_running_job_asks_its_worker(client: TestClient, database: Database) -> None:
    job_id = client.post("/jobs").json()["id"]
    with database.session(write=True) as session:
        leases.claim_job(session=session, worker_id="w")
    job = client.post(f"/jobs/{job_id}/cancel").json()
    assert (job["state"], job["cancel_requested"]) == ("running", True)


def test_metrics_are_paged_by_step(client: TestClient, database: Database) -> None:
    job_id = client.post("/jobs").json()["id"]
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w")
        rows = [
            {"step": s, "epoch": 0, "batch": s, "loss": 2.0 - s / 10, "accuracy": 0.1, "time": s}
            for s in range(5)
        ]
        leases.record_progress(session=session, lease=lease, rows=rows)
        leases.record_epoch(
            session=session,
            lease=lease,
            summary=EpochRead(epoch=0, train_loss=1.8, train_accuracy=0.1, test_loss=1.7,
                              test_accuracy=0.2, seconds=3.5),
        )
    first = client.get(f"/jobs/{job_id}/metrics", params={"limit": 3}).json()
    assert [m["step"] for m in first["items"]] == [0, 1, 2]
    assert first["items"][0] == {
        "step": 0, "epoch": 0, "batch": 0, "loss": 2.0, "accuracy": 0.1, "time": 0.0
    }
    rest = client.get(
        f"/jobs/{job_id}/metrics", params={"after_step": first["next_after_step"]}
    ).json()
    assert [m["step"] for m in rest["items"]] == [3, 4]
    empty = client.get(f"/jobs/{job_id}/metrics", params={"after_step": 4}).json()
    assert empty == {"items": [], "next_after_step": 4}
    assert client.get(f"/jobs/{job_id}/epochs").json() == [
        {"epoch": 0, "train_loss": 1.8, "train_accuracy": 0.1, "test_loss": 1.7,
         "test_accuracy": 0.2, "seconds": 3.5, "val_loss": None, "val_accuracy": None}
    ]
    job = client.get(f"/jobs/{job_id}").json()
    assert job["loss"] == pytest.approx(1.6)
    assert (job["progress"]["step"], job["progress"]["epoch"]) == (5, 1)


def test_predict_needs_a_trained_model(client: TestClient) -> None:
    job_id = client.post("/jobs").json()["id"]
    response = client.post(f"/jobs/{job_id}/predict", json={"instances": [[0.0] * 784]})
    assert response.status_code == 409
    assert "no trained model" in response.json()["detail"]
    assert client.post("/jobs/77/predict", json={"instances": [[0.0] * 784]}).status_code == 404


def test_an_idempotency_key_makes_a_retry_return_the_same_job(client: TestClient) -> None:
    headers = {"Idempotency-Key": "upload-42"}
    first = client.post("/jobs", json={"epochs": 2}, headers=headers)
    retry = client.post("/jobs", json={"epochs": 2}, headers=headers)
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.headers["Location"] == first.headers["Location"]
    other = client.post("/jobs", json={"epochs": 3}, headers=headers)
    assert other.status_code == 409 and "different job spec" in other.json()["detail"]
    assert client.post("/jobs", json={"epochs": 2}).json()["id"] != first.json()["id"]
    assert client.get("/jobs").json()["total"] == 2


def test_queue_position_and_eta(client: TestClient, database: Database) -> None:
    ids = [client.post("/jobs", json={"batch_size": 100}).json()["id"] for _ in range(3)]
    assert [client.get(f"/jobs/{i}").json()["queue_position"] for i in ids] == [1, 2, 3]
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w")
        leases.start_job(session=session, lease=lease, total_steps=100)
        rows = [{"step": s, "epoch": 0, "batch": s, "loss": 1.0, "accuracy": 0.5, "time": s}
                for s in range(20)]
        leases.record_progress(session=session, lease=lease, rows=rows, steps_per_second=8.0)
    running = client.get(f"/jobs/{ids[0]}").json()
    assert running["queue_position"] is None
    assert running["samples_per_second"] == 800.0  # 8 steps/s of 100 images
    assert running["eta_seconds"] == 10.0  # 80 steps left at 8 a second
    listed = client.get("/jobs").json()["items"]
    assert [j["queue_position"] for j in listed] == [2, 1, None]
    assert listed[1]["eta_seconds"] is None and listed[1]["samples_per_second"] is None


def test_max_points_folds_a_long_curve_into_buckets(
    client: TestClient, database: Database
) -> None:
    job_id = client.post("/jobs").json()["id"]
    losses = [10.0 - s / 100 for s in range(1000)]
    with database.session(write=True) as session:
        lease = leases.claim_job(session=session, worker_id="w")
        rows = [{"step": s, "epoch": s // 400, "batch": s % 400, "loss": losses[s],
                 "accuracy": 0.5, "time": s / 10} for s in range(1000)]
        leases.record_progress(session=session, lease=lease, rows=rows)
    summary = client.get(f"/jobs/{job_id}/metrics", params={"max_points": 300}).json()
    assert (summary["bucket_size"], summary["total_steps"]) == (4, 1000)
    assert len(summary["items"]) == 250
    first, last = summary["items"][0], summary["items"][-1]
    assert (first["step"], first["step_end"], last["step_end"]) == (0, 3, 999)
    assert first["loss"] == pytest.approx(sum(losses[:4]) / 4)
    assert (first["loss_min"], first["loss_max"]) == (losses[3], losses[0])
    assert last["time"] == pytest.approx(99.9)
    exact = client.get(f"/jobs/{job_id}/metrics", params={"max_points": 5000}).json()
    assert exact["bucket_size"] == 1 and len(exact["items"]) == 1000
    assert exact["items"][7]["loss"] == exact["items"][7]["loss_min"] == losses[7]
    assert client.get(f"/jobs/{job_id}/metrics", params={"max_points": 0}).status_code == 422


def test_numbers_past_what_the_database_holds_are_422_not_500(client: TestClient) -> None:
    # Found by the schemathesis run: SQLite integers stop at 2**63 - 1.
    assert client.get("/jobs", params={"offset": 2**63}).status_code == 422
    job_id = client.post("/jobs").json()["id"]
    huge = client.get(f"/jobs/{job_id}/metrics", params={"after_step": 2**63})
    assert huge.status_code == 422
    # Found by the live fuzz: steps are 32-bit on PostgreSQL (this test runs on both).
    past_int32 = client.get(f"/jobs/{job_id}/metrics", params={"after_step": 10**12})
    assert past_int32.status_code == 422, past_int32.text
    last = client.get(f"/jobs/{job_id}/metrics", params={"after_step": 2**31 - 1})
    assert last.status_code == 200 and last.json()["items"] == []


def test_listing_jobs_takes_the_same_few_queries_for_5_jobs_or_50(
    client: TestClient, database: Database
) -> None:
    """The dashboard polls GET /jobs every 1.5 s: its cost must not grow with the page."""
    from sqlalchemy import event

    engine = client.app.state.database.engine
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        statements.append(statement)

    def queries_for(limit: int) -> int:
        statements.clear()
        event.listen(engine, "before_cursor_execute", count)
        try:
            page = client.get("/jobs", params={"limit": limit}).json()
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert len(page["items"]) == limit
        return len(statements)

    ids = [client.post("/jobs", json={"epochs": 1}).json()["id"] for _ in range(50)]
    for job_id in ids[::3]:
        client.post(f"/jobs/{job_id}/cancel")  # a mix of queued and finished jobs
    few, many = queries_for(5), queries_for(50)
    assert few == many <= 6, statements
    # The batched positions are the ones each job's own view gives.
    listed = {job["id"]: job for job in client.get("/jobs", params={"limit": 50}).json()["items"]}
    for job_id in ids[1:6]:
        one = client.get(f"/jobs/{job_id}").json()
        assert listed[job_id]["queue_position"] == one["queue_position"]
        assert listed[job_id]["workers_alive"] == one["workers_alive"]
