"""A worker training on uploaded datasets: copied once from the database into its own data
dir and checked, standardised (tabular) or scaled (images) as recorded at upload, and the
standardisation exported inside the .tflite, so the model answers raw rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from fastapi.testclient import TestClient
from sqlalchemy import delete

from service.api.app import create_app
from service.config import Settings
from service.datasets import storage
from service.db import Database
from service.migrate import upgrade
from service.models import Dataset
from service.queue import jobs
from service.schemas import JobSpec
from tests.helpers.datasets import FRUITS, csv_bytes, mnist_png_zip, skewed_table
from tests.helpers.settings import make_settings
from worker.data import Mnist
from worker.main import Worker
from worker.models import build_model
from worker.training import fit
from worker.updaters import build_updater

# Adam at 0.01 for 20 epochs: on standardised features this small net learns the table.
TABULAR_JOB = {
    "model": {"layers": [{"units": 32}, {"units": 3, "activation": "softmax"}]},
    "optimizer": {"name": "adam", "learning_rate": 0.01},
    "epochs": 20,
    "batch_size": 32,
}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Settings, Database]]:
    settings = make_settings(tmp_path / "data")
    upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    with TestClient(create_app(settings)) as client:
        yield client, settings, database
    database.dispose()


def run(client: TestClient, settings: Settings, spec: dict) -> dict:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    with Worker(settings) as worker:
        assert worker.run_once()
    return client.get(f"/jobs/{response.json()['id']}").json()


class _Quiet:
    def on_batch(self, **_: float) -> None:
        pass

    def on_epoch_end(self, **_: float) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def test_a_table_of_skewed_scales_trains_well_because_it_is_standardised(
    api: tuple[TestClient, Settings, Database],
) -> None:
    client, settings, database = api
    x, labels = skewed_table(600)
    dataset = client.post("/datasets", files={"file": ("fruit.csv", csv_bytes(x, labels))}).json()
    job = run(client, settings, {**TABULAR_JOB, "dataset": {"id": dataset["id"]}})
    assert job["state"] == "succeeded", job["error"]
    assert job["test_accuracy"] >= 0.9

    # The same net on the raw features (0.05 to 2,500) learns little in the same epochs.
    arrays = storage.read_arrays(storage.fetch(
        database=database, dataset_id=dataset["id"], cache_dir=settings.datasets_dir,
        scratch=settings.data_dir / "tmp"))
    raw = Mnist(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"])
    spec = JobSpec.model_validate({**TABULAR_JOB, "dataset": {"id": dataset["id"]}})
    model = build_model(spec.model, seed=0, input_shape=(4,))
    _, raw_accuracy = fit(model, build_updater(spec.optimizer), raw, epochs=spec.epochs,
                          batch_size=spec.batch_size, seed=0, callback=_Quiet())
    assert raw_accuracy < 0.7 < job["test_accuracy"]

    # The exported model standardises raw rows itself, and answers in the dataset's labels.
    with database.session() as session:
        model_bytes = jobs.model_artifact(session=session, job_id=job["id"]).content
    interpreter = Interpreter(model_content=model_bytes)
    (inputs,), (outputs,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inputs["shape_signature"]) == [-1, 4]
    test = arrays["x_test"]
    interpreter.resize_tensor_input(inputs["index"], list(test.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], test)
    interpreter.invoke()
    probabilities = interpreter.get_tensor(outputs["index"])
    assert probabilities.shape == (len(test), 3)
    assert (probabilities.argmax(axis=1) == arrays["y_test"]).mean() >= 0.9
    served = client.post(f"/jobs/{job['id']}/predict", json={"instances": test[:5].tolist()})
    assert served.status_code == 200, served.text
    predictions = served.json()["predictions"]
    assert [p["label"] for p in predictions] == [FRUITS[p["class"]] for p in predictions]
    assert "digit" not in predictions[0]
    assert np.allclose([p["probabilities"] for p in predictions], probabilities[:5], atol=1e-5)


def test_a_worker_copies_a_dataset_once_and_checks_it(
    api: tuple[TestClient, Settings, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, settings, _ = api
    content = mnist_png_zip(20, classes=(0, 1, 7))
    dataset = client.post("/datasets", files={"file": ("d.zip", content)}).json()
    copies = []
    real_copy = storage._copy
    monkeypatch.setattr(storage, "_copy", lambda *a: copies.append(a) or real_copy(*a))
    convnet = {"layers": [{"type": "conv2d", "filters": 8, "kernel_size": 3},
                          {"type": "max_pool2d"}, {"type": "flatten"},
                          {"units": 3, "activation": "softmax"}]}
    spec = {"dataset": {"id": dataset["id"]}, "model": convnet, "epochs": 4, "batch_size": 8,
            "optimizer": {"name": "adam", "learning_rate": 0.005}}
    first, second = run(client, settings, spec), run(client, settings, {**spec, "seed": 1})
    assert first["state"] == second["state"] == "succeeded", (first["error"], second["error"])
    assert len(copies) == 1  # the second job found the checked copy
    cached = settings.datasets_dir / f"{dataset['sha256']}.npz"
    assert cached.is_file() and cached.stat().st_size == dataset["bytes"]
    assert first["test_accuracy"] > 0.6  # three digits, 48 training images, 4 epochs


def test_a_dataset_deleted_under_a_queued_job_fails_it_saying_so(
    api: tuple[TestClient, Settings, Database],
) -> None:
    client, settings, database = api
    x, labels = skewed_table(60)
    dataset = client.post("/datasets", files={"file": ("t.csv", csv_bytes(x, labels))}).json()
    response = client.post("/jobs", json={**TABULAR_JOB, "dataset": {"id": dataset["id"]}})
    with database.session(write=True) as session:  # as a delete racing the submission could
        session.execute(delete(Dataset).where(Dataset.id == dataset["id"]))
    with Worker(settings) as worker:
        assert worker.run_once()
    job = client.get(f"/jobs/{response.json()['id']}").json()
    assert job["state"] == "failed"
    assert job["error"] == f"dataset {dataset['id']} was deleted: there is nothing to train on"
