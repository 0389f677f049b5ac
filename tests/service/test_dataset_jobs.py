"""Jobs on uploaded datasets, as the API takes them: `"dataset": {"id": N}`, the model checked
against the dataset's input shape and classes at submit (the MNIST rule of 10 is this rule),
what the job keeps of its dataset, and deletion while a job uses it. No worker runs here."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.models import JobDataset
from tests.helpers.datasets import csv_bytes, mnist_png_zip, skewed_table

DENSE_3 = {"layers": [{"units": 16}, {"units": 3, "activation": "softmax"}]}


def fruit(client: TestClient) -> dict:
    x, labels = skewed_table(200)
    response = client.post("/datasets", files={"file": ("fruit.csv", csv_bytes(x, labels))})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_job_names_an_uploaded_dataset_by_id(client: TestClient, database: Database) -> None:
    dataset = fruit(client)
    response = client.post("/jobs", json={"dataset": {"id": dataset["id"], "train_limit": 50},
                                          "model": DENSE_3})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["spec"]["dataset"] == {"id": dataset["id"], "train_limit": 50, "test_limit": None}
    with database.session() as session:
        kept = session.get(JobDataset, job["id"])
        assert (kept.dataset_id, kept.name, kept.kind) == (dataset["id"], "fruit", "tabular")
        assert kept.classes == ["apple", "banana", "cherry"] and kept.input_shape == [4]
    # MNIST stays the default, and its spec reads as it always has.
    default = client.post("/jobs").json()
    assert default["spec"]["dataset"] == {"name": "mnist", "train_limit": None,
                                          "test_limit": None}
    with database.session() as session:
        assert session.get(JobDataset, default["id"]) is None


@pytest.mark.parametrize(
    ("model", "field", "words"),
    [
        ({"layers": [{"units": 16}, {"units": 10}]}, "model.layers",
         ["dense with 3 units (one per class), got 10 units", "3 classes"]),
        ({"layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"units": 3}]},
         "model.layers", ["layers[0] (conv2d)", "image input", "(4,)"]),
    ],
    ids=["last layer of another size", "a conv on tabular rows"],
)
def test_a_model_that_does_not_fit_its_dataset_is_a_422_naming_both(
    client: TestClient, model: dict, field: str, words: list[str]
) -> None:
    dataset = fruit(client)
    response = client.post("/jobs", json={"dataset": {"id": dataset["id"]}, "model": model})
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert message.startswith(f"{field}:"), message
    for text in words:
        assert text in message, message
    assert client.get("/jobs").json()["total"] == 0


def test_an_image_dataset_takes_a_convnet_on_its_own_shape(client: TestClient) -> None:
    upload = client.post("/datasets", files={"file": ("d.zip", mnist_png_zip(4, classes=(1, 7)))},
                         data={"image_size": "12x12"})
    dataset_id = upload.json()["id"]
    convnet = {"layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3},
                          {"type": "max_pool2d"}, {"type": "flatten"}, {"units": 2}]}
    ok = client.post("/jobs", json={"dataset": {"id": dataset_id}, "model": convnet})
    assert ok.status_code == 201, ok.text
    # On MNIST the same net is refused: its last layer has 2 units, not 10.
    mnist = client.post("/jobs", json={"model": convnet})
    assert mnist.status_code == 422
    assert "dense with 10 units (one per class), got 2 units" in mnist.json()["message"]


def test_a_dataset_that_does_not_exist_or_was_deleted_is_a_422(client: TestClient) -> None:
    missing = client.post("/jobs", json={"dataset": {"id": 41}, "model": DENSE_3})
    assert missing.status_code == 422
    assert missing.json()["message"].startswith("dataset.id: dataset 41 does not exist")
    # The declared 422 shape, as every other 422 (the live fuzz found a bare string here).
    assert missing.json()["detail"] == [
        {"loc": ["body"], "msg": missing.json()["message"], "type": "value_error"}]
    dataset = fruit(client)
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    deleted = client.post("/jobs", json={"dataset": {"id": dataset["id"]}, "model": DENSE_3})
    assert deleted.status_code == 422
    assert "does not exist (or was deleted)" in deleted.json()["message"]
    both = client.post("/jobs", json={"dataset": {"id": 1, "name": "mnist"}})
    assert both.status_code == 422
    assert both.json()["message"].startswith("dataset:")
    assert client.get("/jobs").json()["total"] == 0


def test_a_dataset_is_kept_while_a_queued_job_uses_it(
    client: TestClient, database: Database
) -> None:
    dataset = fruit(client)
    job = client.post("/jobs", json={"dataset": {"id": dataset["id"]}, "model": DENSE_3}).json()
    refused = client.delete(f"/datasets/{dataset['id']}")
    assert refused.status_code == 409
    assert f"job(s) {job['id']}" in refused.json()["message"]
    assert client.post(f"/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    # The job still knows what it trained on.
    with database.session() as session:
        assert session.get(JobDataset, job["id"]).classes == ["apple", "banana", "cherry"]


def test_the_loss_row_cap_counts_the_datasets_own_samples(
    settings: Settings, database: Database
) -> None:
    capped = settings.model_copy(update={"max_job_rows": 1_000})
    with TestClient(create_app(capped)) as client:
        x = np.random.default_rng(0).normal(size=(100, 2))
        body = client.post("/datasets", files={"file": ("t.csv", csv_bytes(x, np.arange(100) % 2))})
        dataset_id = body.json()["id"]  # 80 training rows
        spec = {"dataset": {"id": dataset_id}, "model": {"layers": [{"units": 2}]},
                "batch_size": 4}
        # 50 epochs of 20 batches fit in 1,000 rows (on MNIST's 60,000 images they would not).
        assert client.post("/jobs", json={**spec, "epochs": 50}).status_code == 201
        refused = client.post("/jobs", json={**spec, "epochs": 51})
        assert refused.status_code == 422
        assert "1,020 loss rows" in refused.json()["message"]
        assert "TAPEFIT_MAX_JOB_ROWS (1,000)" in refused.json()["message"]
