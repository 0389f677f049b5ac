"""TensorFlow Serving's REST API, checked against the JSON shapes TF Serving itself returns."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.db import Database
from service.schemas import JobState
from tests.helpers.serving import Trained, add_job


def test_model_status(served: TestClient, trained: Trained) -> None:
    names = (("best", trained.good), ("latest", trained.weak), (str(trained.good), trained.good))
    for name, job_id in names:
        response = served.get(f"/v1/models/{name}")
        assert response.status_code == 200
        assert response.json() == {
            "model_version_status": [
                {"version": str(job_id), "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}}
            ],
            "name": name,
            "ready": True,
        }
    one = served.get(f"/v1/models/best/versions/{trained.good}").json()
    assert one["model_version_status"][0]["version"] == str(trained.good)


def test_status_of_unfinished_jobs_follows_tf_servings_states(
    client: TestClient, database: Database
) -> None:
    cases = {
        add_job(database, JobState.queued): ("START", "OK", ""),
        add_job(database, JobState.running): ("LOADING", "OK", ""),
        add_job(database, JobState.failed, error="diverged at step 7"): (
            "END", "UNKNOWN", "diverged at step 7"),
    }
    cancelled = add_job(database, JobState.cancelled)
    cases[cancelled] = ("END", "CANCELLED", f"job {cancelled} was cancelled")
    for job_id, (state, code, message) in cases.items():
        status = client.get(f"/v1/models/{job_id}").json()
        assert status["model_version_status"][0] == {
            "version": str(job_id), "state": state,
            "status": {"error_code": code, "error_message": message},
        }
        assert status["ready"] is False


def test_metadata_is_a_signature_def(served: TestClient, trained: Trained) -> None:
    response = served.get("/v1/models/best/metadata")
    assert response.status_code == 200
    body = response.json()
    spec = {"name": "best", "signature_name": "", "version": str(trained.good)}
    assert body["model_spec"] == spec
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    (images,) = signature["inputs"].values()
    (probabilities,) = signature["outputs"].values()
    assert images["dtype"] == probabilities["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in images["tensor_shape"]["dim"]] == ["-1", "784"]
    assert [d["size"] for d in probabilities["tensor_shape"]["dim"]] == ["-1", "10"]
    assert served.get(f"/v1/models/latest/versions/{trained.weak}/metadata").status_code == 200


def expected(served: TestClient, name: str, images: np.ndarray) -> list[list[float]]:
    response = served.post(f"/jobs/{name}/predict", json={"instances": images.tolist()})
    return [p["probabilities"] for p in response.json()["predictions"]]


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (lambda x: {"instances": x.reshape(3, 784).tolist()}, "predictions"),
        (lambda x: {"instances": x.tolist()}, "predictions"),  # 28 rows of 28
        (lambda x: {"signature_name": "serving_default",
                    "instances": [{"images": row} for row in x.reshape(3, 784).tolist()]},
         "predictions"),
        (lambda x: {"inputs": x.reshape(3, 784).tolist()}, "outputs"),
        (lambda x: {"inputs": {"images": x.tolist()}}, "outputs"),
    ],
    ids=["rows", "rows-28x28", "rows-named", "columns", "columns-named"],
)
def test_predict_in_row_and_columnar_format(
    served: TestClient, trained: Trained, body, key: str  # noqa: ANN001
) -> None:
    images = trained.x_test[:3]
    for path in ("/v1/models/best:predict", f"/v1/models/best/versions/{trained.good}:predict",
                 f"/v1/models/{trained.good}:predict"):
        response = served.post(path, json=body(images))
        assert response.status_code == 200, response.text
        assert list(response.json()) == [key]
        want = expected(served, "best", images)
        np.testing.assert_allclose(response.json()[key], want, atol=1e-6)
    latest = served.post("/v1/models/latest:predict", json=body(images)).json()[key]
    np.testing.assert_allclose(latest, expected(served, str(trained.weak), images), atol=1e-6)


def test_the_name_does_not_swallow_predict(served: TestClient, trained: Trained) -> None:
    body = {"instances": [[0.0] * 784]}
    assert served.post("/v1/models/best:predict", json=body).status_code == 200
    for path in ("/v1/models/best:predict:predict", "/v1/models/best%3Apredict:predict",
                 "/v1/models/:predict"):
        response = served.post(path, json=body)
        assert response.status_code in (404, 405), (path, response.text)
    assert served.get("/v1/models/best:predict").status_code == 405  # POST only
    assert served.post("/v1/models/best/versions/:predict", json=body).status_code in (404, 405)


def test_other_verbs_are_a_clear_error(served: TestClient, trained: Trained) -> None:
    body = {"instances": [[0.0] * 784]}
    for path in ("/v1/models/best:classify", f"/v1/models/best/versions/{trained.good}:regress"):
        response = served.post(path, json=body)
        assert response.status_code == 400 and "serves :predict" in response.json()["error"]
    response = served.post("/v1/models/best:explain", json=body)
    assert (response.status_code, list(response.json())) == (404, ["error"])


BAD = [
    (b'{"instances": [[0.0] * 784]}', "JSON Parse error"),
    (b"[1, 2]", "JSON object"),
    (b'{"instances": [[0.5, 0.5]]}',
     "expected shape [N, 784], [N, 28, 28] or [N, 28, 28, 1], got [1, 2]"),
    (b'{"instances": [[NaN' + b", 0.0" * 783 + b"]]}", "finite"),
    (b'{"instances": [[255' + b", 0" * 783 + b"]]}", "in [0, 1]"),
    (b'{"instances": [["a"' + b", 0" * 783 + b"]]}", "numbers"),
    (b'{"instances": [[0.0], [0.0, 0.0]]}', "different lengths"),
    (b'{"instances": []}', "got [0]"),
    (b'{"instances": 3}', "must be a list"),
    (b'{"instances": [{"pixels": [0]}]}', "only input is 'images'"),
    (b'{"instances": [[0]], "inputs": [[0]]}', "either"),
    (b"{}", "either"),
    (b'{"inputs": [[0]], "extra": 1}', "unknown field"),
    (b'{"signature_name": "classify", "inputs": [[0]]}', "signature name"),
    (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"instances": [' + b"[" * 70 + b"0" + b"]" * 70 + b"]}", "nests too deeply"),
    (b'{"instances": [[1e999' + b", 0" * 783 + b"]]}", "finite"),
]


@pytest.mark.parametrize(("body", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_predict_is_a_400_with_an_error(
    served: TestClient, body: bytes, message: str
) -> None:
    response = served.post("/v1/models/best:predict", content=body)
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"]
    assert message in response.json()["error"]


def test_too_many_instances(served: TestClient) -> None:
    body = {"inputs": np.zeros((1001, 784)).tolist()}
    response = served.post("/v1/models/best:predict", json=body)
    assert response.status_code == 400 and "1 to 1000 images" in response.json()["error"]


def test_unknown_models_and_versions_are_404(served: TestClient, trained: Trained) -> None:
    body = {"instances": [[0.0] * 784]}
    for method, path in [
        ("GET", "/v1/models/77"), ("GET", "/v1/models/worst"), ("GET", "/v1/models/77/metadata"),
        ("POST", "/v1/models/77:predict"), ("POST", "/v1/models/mnist:predict"),
        ("GET", f"/v1/models/best/versions/{trained.weak}"),
        ("POST", f"/v1/models/best/versions/{trained.weak}:predict"),
        ("POST", f"/v1/models/{trained.good}/versions/latest:predict"),
        ("GET", f"/v1/models/{trained.good}/versions/9/metadata"),
        ("GET", "/v1/nothing"), ("POST", "/v1/models/best/labels/x:predict"),  # no such path
    ]:
        response = served.request(method, path, json=body if method == "POST" else None)
        assert response.status_code == 404, (path, response.text)
        assert list(response.json()) == ["error"]


def test_an_unfinished_job_cannot_predict(client: TestClient, database: Database) -> None:
    job_id = add_job(database, JobState.running)
    for response in (
        client.post(f"/v1/models/{job_id}:predict", json={"instances": [[0.0] * 784]}),
        client.get(f"/v1/models/{job_id}/metadata"),
    ):
        assert response.status_code == 404  # TF Serving: "servable not found" until loaded
        message = f"job {job_id} is still running: it has no trained model"
        assert response.json() == {"error": message}
    assert client.post("/v1/models/latest:predict", json={"instances": [[0.0] * 784]}).json() == {
        "error": "no job has succeeded yet, so 'latest' names no model"
    }


def test_a_curl_d_request_works_as_in_tf_servings_own_examples(served: TestClient) -> None:
    # `curl -d '{"instances": ...}' .../v1/models/m:predict` labels the JSON as a form.
    body = b'{"instances": [[' + b",".join([b"0.0"] * 784) + b"]]}"
    response = served.post("/v1/models/best:predict", content=body,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"][0]) == 10
