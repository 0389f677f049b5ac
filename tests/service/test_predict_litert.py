"""LiteRT serves what TensorFlow trained: same numbers, safe under threads, own files only."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.inference import ModelStore, ModelUnavailable, model_path
from service.schemas import JobSpec
from tests.service.conftest import GOOD_SPEC, Trained


@pytest.mark.parametrize("implementation", ["keras", "naive"])
def test_litert_matches_a_trained_tensorflow_model_within_1e_5(
    trained: Trained, implementation: str, tmp_path: Path
) -> None:
    import tensorflow as tf

    from worker.export import export_model
    from worker.models import build_model, predict_probabilities

    spec = JobSpec.model_validate({**GOOD_SPEC, "model": {**GOOD_SPEC["model"],
                                                          "implementation": implementation}})
    model = build_model(spec.model, seed=0)
    images = trained.x_test.reshape(-1, 784)
    # Trained weights, not the initial ones: a few steps of plain gradient descent.
    for start in range(0, 500, 50):
        batch, labels = images[start : start + 50], trained.y_test[start : start + 50]
        with tf.GradientTape() as tape:
            probabilities = predict_probabilities(model, batch)
            loss = tf.reduce_mean(
                tf.keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            )
        for weight, gradient in zip(model.weights, tape.gradient(loss, model.weights), strict=True):
            weight.assign_sub(0.1 * gradient)
    export_model(model, tmp_path / "models" / "1")
    store = ModelStore(tmp_path / "models", capacity=1)
    expected = predict_probabilities(model, images).numpy()
    got = np.concatenate([store.predict(1, images[:1]), store.predict(1, images[1:])])
    assert np.abs(got - expected).max() < 1e-5
    if implementation == "keras":  # the naive layers learn too slowly to see it in 10 steps
        assert (got.argmax(axis=1) == trained.y_test).mean() > 0.5


def test_litert_scores_the_accuracy_the_worker_measured_with_tensorflow(trained: Trained) -> None:
    store = ModelStore(trained.settings.models_dir, capacity=2)
    for job_id in (trained.good, trained.weak):
        digits = store.predict(job_id, trained.x_test.reshape(-1, 784)).argmax(axis=1)
        litert = (digits == trained.y_test).mean()
        assert abs(litert - trained.accuracy[job_id]) <= 1 / 500, (job_id, litert)


def test_concurrent_requests_of_mixed_sizes_get_their_own_answers(trained: Trained) -> None:
    store = ModelStore(trained.settings.models_dir, capacity=1)  # evictions on every switch
    images = trained.x_test.reshape(-1, 784)
    jobs = (trained.good, trained.weak)
    cases = [(jobs[i % 2], i % 50, 1 + i % 7) for i in range(400)]
    reference = ModelStore(trained.settings.models_dir, capacity=2)
    expected = [reference.predict(job, images[start : start + n]) for job, start, n in cases]

    def run(case: tuple[int, int, int]) -> np.ndarray:
        job, start, n = case
        return store.predict(job, images[start : start + n])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, cases))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(store) == 1


def test_concurrent_http_predictions(served: TestClient, trained: Trained) -> None:
    images = trained.x_test.reshape(-1, 784)

    def ask(i: int) -> list[int]:
        name = ("best", "latest", str(trained.good))[i % 3]
        body = {"instances": images[i : i + 1 + i % 4].tolist()}
        response = served.post(f"/jobs/{name}/predict", json=body)
        assert response.status_code == 200, response.text
        return [p["digit"] for p in response.json()["predictions"]]

    serial = [ask(i) for i in range(48)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(ask, range(48))) == serial


def test_a_link_out_of_the_models_folder_is_never_loaded(trained: Trained, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(trained.settings.models_dir / str(trained.good), elsewhere)
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(elsewhere, models / "5")
    store = ModelStore(models, capacity=2)
    with pytest.raises(ModelUnavailable, match="not in the models folder"):
        store.predict(5, np.zeros((1, 784), np.float32))
    with pytest.raises(ModelUnavailable, match="no trained model"):
        store.predict(6, np.zeros((1, 784), np.float32))


def test_a_re_exported_model_replaces_the_cached_one(trained: Trained, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "1").mkdir(parents=True)
    store = ModelStore(models, capacity=2)
    image = trained.x_test[:1].reshape(1, 784)
    shutil.copy(model_path(trained.settings.models_dir, trained.good), models / "1")
    first = store.predict(1, image)
    target = models / "1" / "model.tflite"
    shutil.copy(model_path(trained.settings.models_dir, trained.weak), target)
    os.utime(target, ns=(1, target.stat().st_mtime_ns + 10**9))
    assert not np.array_equal(store.predict(1, image), first)


def test_the_model_downloads_as_tflite_and_loads_in_litert(
    served: TestClient, trained: Trained, tmp_path: Path
) -> None:
    response = served.get("/jobs/best/model")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    disposition = response.headers["content-disposition"]
    assert f'filename="tapefit-job-{trained.good}.tflite"' in disposition
    assert served.get(f"/jobs/{trained.good}/model").content == response.content
    path = tmp_path / "model.tflite"
    path.write_bytes(response.content)
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inputs,), (outputs,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inputs["shape_signature"]) == [-1, 784] and list(outputs["shape"]) == [1, 10]
    image = trained.x_test[:1].reshape(1, 784)
    interpreter.set_tensor(inputs["index"], image)
    interpreter.invoke()
    served_answer = served.post("/jobs/best/predict", json={"instances": image.tolist()}).json()
    np.testing.assert_allclose(
        interpreter.get_tensor(outputs["index"])[0],
        served_answer["predictions"][0]["probabilities"],
        atol=1e-6,
    )
    assert served.get(f"/jobs/{trained.weak}/model").content != response.content


def test_download_of_an_unknown_or_unfinished_job(client: TestClient) -> None:
    assert client.get("/jobs/latest/model").status_code == 404
    assert client.get("/jobs/12/model").status_code == 404
    job_id = client.post("/jobs").json()["id"]
    response = client.get(f"/jobs/{job_id}/model")
    assert response.status_code == 409 and "no trained model" in response.json()["detail"]


def test_json_predictions_under_aliases(served: TestClient, trained: Trained) -> None:
    body = {"instances": trained.x_test[:5].tolist()}  # 28 rows of 28
    for alias, job_id in (("best", trained.good), ("latest", trained.weak)):
        assert served.post(f"/jobs/{alias}/predict", json=body).json() == served.post(
            f"/jobs/{job_id}/predict", json=body
        ).json()
    bad = served.post("/jobs/best/predict", json={"instances": [[2.0] * 784]})
    assert bad.status_code == 422 and bad.json()["message"].startswith("instances.0")
    nan = b'{"instances": [[NaN' + b", 0" * 783 + b"]]}"
    response = served.post(
        "/jobs/best/predict", content=nan, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["message"].startswith("instances.0")
    assert served.post("/jobs/worst/predict", json=body).status_code == 404


def test_a_model_only_in_the_database_is_served(tmp_path: Path, trained: Trained) -> None:
    """An API on another machine shares only the database: no models folder at all."""
    elsewhere = trained.settings.model_copy(
        update={"data_dir": tmp_path / "elsewhere", "database_url": trained.settings.sqlalchemy_url}
    )
    with TestClient(create_app(elsewhere)) as client:
        body = {"instances": trained.x_test[:20].tolist()}
        here = client.post(f"/jobs/{trained.good}/predict", json=body)
        assert here.status_code == 200
        digits = [p["digit"] for p in here.json()["predictions"]]
        assert np.mean(np.array(digits) == trained.y_test[:20]) > 0.7
        # It was copied here from the database, whole.
        copied = model_path(elsewhere.models_dir, trained.good).read_bytes()
        original = model_path(trained.settings.models_dir, trained.good).read_bytes()
        assert copied == original
        assert client.get(f"/jobs/{trained.good}/model").content == original
