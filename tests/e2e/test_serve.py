"""End to end: the real `tapefit serve` with its worker subprocess, on a port of its own."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.schemas import FINAL_STATES
from tests.helpers.processes import run_server, wait_until
from tests.helpers.settings import SAMPLE


@pytest.fixture
def server(tmp_path: Path) -> Iterator[httpx.Client]:
    with run_server(tmp_path, workers=1) as client:
        yield client


def test_submit_train_poll_and_predict(server: httpx.Client) -> None:
    response = server.post("/jobs", json={"epochs": 1, "batch_size": 32})
    assert response.status_code == 201
    job_id = response.json()["id"]

    def finished() -> dict | None:
        job = server.get(f"/jobs/{job_id}").json()
        return job if job["state"] in FINAL_STATES else None

    job = wait_until(finished, 180, f"job {job_id} to finish")
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"]["fraction"] == 1.0

    metrics = server.get(f"/jobs/{job_id}/metrics", params={"limit": 10_000}).json()["items"]
    assert [m["step"] for m in metrics] == list(range(math.ceil(2000 / 32)))

    sample = np.load(SAMPLE)
    instances = (sample["x_test"].astype(np.float32) / 255).reshape(-1, 784)
    predictions = server.post(
        f"/jobs/{job_id}/predict", json={"instances": instances.tolist()[:500]}
    ).json()["predictions"]
    accuracy = np.mean([p["digit"] for p in predictions] == sample["y_test"][:500])
    assert accuracy > 0.8
    assert job["test_accuracy"] == pytest.approx(accuracy, abs=0.01)


def test_concurrent_submissions_while_workers_write(tmp_path: Path) -> None:
    with run_server(tmp_path, workers=2) as client:
        submit_and_check(client)


def submit_and_check(client: httpx.Client) -> None:
    # Two long jobs first, one per worker: their loss rows are written all through the burst
    # (25,000 batches each: they outlast it by far, and are handed back at the end).
    long = {"epochs": 100, "batch_size": 8, "dataset": {"train_limit": 2000, "test_limit": 100},
            "model": {"layers": [{"units": 64}, {"units": 10, "activation": "softmax"}]}}
    busy = [client.post("/jobs", json={**long, "seed": n}).json()["id"] for n in (1, 2)]

    def training() -> bool:
        return all(client.get(f"/jobs/{i}").json()["progress"]["step"] > 0 for i in busy)

    wait_until(training, 60, "both workers to be training")
    rows_before = sum(client.get(f"/jobs/{i}").json()["progress"]["step"] for i in busy)

    tiny = {"epochs": 1, "batch_size": 10, "dataset": {"train_limit": 100, "test_limit": 50},
            "model": {"layers": [{"units": 16}, {"units": 10, "activation": "softmax"}]}}
    statuses: list[int] = []
    ids: list[int] = []

    def submit_ten(n: int) -> None:
        with httpx.Client(base_url=client.base_url, timeout=30) as own:
            for i in range(10):
                response = own.post("/jobs", json={**tiny, "seed": n * 10 + i})
                statuses.append(response.status_code)
                ids.append(response.json()["id"])

    threads = [threading.Thread(target=submit_ten, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 200
    assert len(set(ids)) == 200
    assert client.get("/jobs", params={"limit": 1}).json()["total"] == 202
    # The workers went on writing loss rows during the burst, and nothing failed.
    rows_after = sum(client.get(f"/jobs/{i}").json()["progress"]["step"] for i in busy)
    assert rows_after > rows_before
    assert client.get("/jobs", params={"state": "failed"}).json()["total"] == 0
