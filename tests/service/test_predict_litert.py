"""LiteRT serves what TensorFlow trained: same numbers, safe under threads, own files only."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.schemas import JobSpec
from service.serving.store import ModelStore, ModelUnavailable
from tests.helpers.serving import GOOD_SPEC, Trained


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
    content = export_model(model)
    sha256 = hashlib.sha256(content).hexdigest()
    store = ModelStore(tmp_path / "models", capacity=1)
    store.put(sha256, content)
    expected = predict_probabilities(model, images).numpy()
    got = np.concatenate([store.predict(sha256, images[:1]), store.predict(sha256, images[1:])])
    assert np.abs(got - expected).max() < 1e-5
    if implementation == "keras":  # the naive layers learn too slowly to see it in 10 steps
        assert (got.argmax(axis=1) == trained.y_test).mean() > 0.5


def test_litert_scores_the_accuracy_the_worker_measured_with_tensorflow(
    trained: Trained, tmp_path: Path
) -> None:
    store, hashes = trained.store(tmp_path, trained.good, trained.weak)
    for job_id, sha256 in zip((trained.good, trained.weak), hashes, strict=True):
        digits = store.predict(sha256, trained.x_test.reshape(-1, 784)).argmax(axis=1)
        litert = (digits == trained.y_test).mean()
        assert abs(litert - trained.accuracy[job_id]) <= 1 / 500, (job_id, litert)


def test_concurrent_requests_of_mixed_sizes_get_their_own_answers(
    trained: Trained, tmp_path: Path
) -> None:
    # Capacity 1: evictions on every switch.
    store, jobs = trained.store(tmp_path, trained.good, trained.weak, capacity=1)
    images = trained.x_test.reshape(-1, 784)
    cases = [(jobs[i % 2], i % 50, 1 + i % 7) for i in range(400)]
    reference, _ = trained.store(tmp_path / "reference", trained.good, trained.weak)
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


def test_a_cached_file_that_does_not_match_its_hash_is_never_served(
    trained: Trained, tmp_path: Path
) -> None:
    """The database row is the truth; a file changed on this disk (or a half-written one)
    is refused, not served, and no name but a hash reaches the disk."""
    store, (good,) = trained.store(tmp_path, trained.good)
    _, weak_content = trained.model(trained.weak)
    (tmp_path / f"{good}.tflite").write_bytes(weak_content)  # another model under its name
    with pytest.raises(ModelUnavailable, match="do not match their recorded sha256"):
        store.predict(good, np.zeros((1, 784), np.float32))
    with pytest.raises(ModelUnavailable, match="do not match"):
        store.put(good, weak_content)
    with pytest.raises(ModelUnavailable, match="gone"):
        store.predict("0" * 64, np.zeros((1, 784), np.float32))
    with pytest.raises(ValueError, match="not a sha256"):
        store.content("../../etc/passwd")


def test_the_api_refills_its_cache_from_the_database_and_checks_it(
    trained: Trained, tmp_path: Path
) -> None:
    elsewhere = trained.settings.model_copy(
        update={"data_dir": tmp_path / "api", "database_url": trained.settings.sqlalchemy_url}
    )
    sha256, content = trained.model(trained.good)
    body = {"instances": trained.x_test[:5].reshape(-1, 784).tolist()}
    with TestClient(create_app(elsewhere)) as client:
        first = client.post(f"/jobs/{trained.good}/predict", json=body).json()
        cached = elsewhere.models_dir / f"{sha256}.tflite"
        assert cached.read_bytes() == content
        # A cached file that no longer matches is refused, whatever it holds.
        cached.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
        other = TestClient(create_app(elsewhere))  # a fresh process: nothing loaded yet
        with other:
            response = other.get(f"/jobs/{trained.good}/model")
            assert response.status_code == 409
            assert "do not match" in response.json()["detail"]
        cached.unlink()  # gone: filled again from the row
        assert client.post(f"/jobs/{trained.good}/predict", json=body).json() == first
        assert client.get(f"/jobs/{trained.good}/model").content == content


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
    booleans = served.post("/jobs/best/predict", json={"instances": [[True] * 784]})
    assert booleans.status_code == 422, booleans.text  # true is no pixel value
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
        # It was copied here from the database, whole, under its hash.
        sha256, original = trained.model(trained.good)
        assert (elsewhere.models_dir / f"{sha256}.tflite").read_bytes() == original
        assert client.get(f"/jobs/{trained.good}/model").content == original
