"""KServe's V2 / Open Inference Protocol, JSON and binary tensor data in both directions."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.db import Database
from service.schemas import JobState
from tests.helpers.serving import Trained, add_job

HEADER = "Inference-Header-Content-Length"


def tensor(images: np.ndarray, **extra: object) -> dict:
    return {"name": "images", "shape": list(images.shape), "datatype": "FP32", **extra}


def binary_request(header: dict, *tensors: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A body as tritonclient builds it: the JSON, then each tensor's little-endian bytes."""
    head = json.dumps(header).encode()
    body = head + b"".join(t.astype("<f4").tobytes() for t in tensors)
    return body, {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


def split_response(response) -> tuple[dict, dict[str, np.ndarray]]:  # noqa: ANN001
    """The JSON header and the outputs, decoded as a V2 client does."""
    length = int(response.headers.get(HEADER, len(response.content)))
    header = json.loads(response.content[:length])
    offset, arrays = length, {}
    for output in header["outputs"]:
        dtype = {"FP32": "<f4", "INT64": "<i8"}[output["datatype"]]
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[output["name"]] = np.array(output["data"], dtype).reshape(output["shape"])
        else:
            chunk = response.content[offset : offset + size]
            arrays[output["name"]] = np.frombuffer(chunk, dtype).reshape(output["shape"])
            offset += size
    assert offset == len(response.content)
    return header, arrays


def reference(served: TestClient, name: str, images: np.ndarray) -> np.ndarray:
    body = {"instances": images.reshape(len(images), 784).tolist()}
    response = served.post(f"/jobs/{name}/predict", json=body)
    return np.array([p["probabilities"] for p in response.json()["predictions"]], np.float32)


def test_server_health_and_metadata(served: TestClient) -> None:
    assert served.get("/v2/health/live").json() == {"live": True}
    assert served.get("/v2/health/ready").json() == {"ready": True}
    assert served.get("/v2").json() == {
        "name": "tapefit", "version": "0.1.0", "extensions": ["binary_tensor_data"]
    }


def test_models_list_readiness_and_metadata(served: TestClient, trained: Trained) -> None:
    assert served.get("/v2/models").json() == {
        "models": [str(trained.weak), str(trained.good), "latest", "best"]
    }
    assert served.get("/v2/models/best/ready").json() == {"name": "best", "ready": True}
    assert served.get(f"/v2/models/best/versions/{trained.good}/ready").status_code == 200
    metadata = served.get("/v2/models/latest").json()
    assert metadata == {
        "name": "latest",
        "versions": [str(trained.weak)],
        "platform": "tensorflow_tflite",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "digit", "datatype": "INT64", "shape": [-1]},
                    {"name": "class", "datatype": "INT64", "shape": [-1]},
                    {"name": "label", "datatype": "BYTES", "shape": [-1]}],
    }
    assert served.get(f"/v2/models/latest/versions/{trained.weak}").json() == metadata


@pytest.mark.parametrize("layout", ["flat", "nested", "28x28"])
def test_infer_with_json_data(served: TestClient, trained: Trained, layout: str) -> None:
    images = trained.x_test[:4]
    shape = [4, 28, 28] if layout == "28x28" else [4, 784]
    data = images.ravel().tolist() if layout == "flat" else images.reshape(shape).tolist()
    body = {"id": "req-42", "inputs": [{"name": "images", "shape": shape, "datatype": "FP32",
                                        "data": data}]}
    response = served.post("/v2/models/best/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    result = response.json()
    assert {k: result[k] for k in ("model_name", "model_version", "id")} == {
        "model_name": "best", "model_version": str(trained.good), "id": "req-42"
    }
    (output,) = result["outputs"]
    assert (output["name"], output["datatype"]) == ("probabilities", "FP32")
    assert output["shape"] == [4, 10]
    assert len(output["data"]) == 40  # flat, row-major
    np.testing.assert_allclose(np.reshape(output["data"], (4, 10)),
                               reference(served, "best", images), atol=1e-6)


def test_the_digit_output_when_asked_and_a_generated_id(
    served: TestClient, trained: Trained
) -> None:
    images = trained.x_test[:5].reshape(5, 784)
    body = {"inputs": [tensor(images, data=images.tolist())],
            "outputs": [{"name": "digit"}, {"name": "probabilities"}]}
    path = f"/v2/models/{trained.good}/versions/{trained.good}/infer"
    result = served.post(path, json=body).json()
    assert [o["name"] for o in result["outputs"]] == ["digit", "probabilities"]
    digit, probabilities = result["outputs"]
    assert (digit["datatype"], digit["shape"]) == ("INT64", [5])
    assert digit["data"] == np.reshape(probabilities["data"], (5, 10)).argmax(axis=1).tolist()
    assert len(result["id"]) == 32


def test_binary_in_and_binary_out(served: TestClient, trained: Trained) -> None:
    images = trained.x_test[:3].reshape(3, 784)
    content, headers = binary_request(
        {"inputs": [tensor(images, parameters={"binary_data_size": images.size * 4})],
         "parameters": {"binary_data_output": True}},
        images,
    )
    response = served.post("/v2/models/best/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, arrays = split_response(response)
    assert header["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [3, 10],
                                  "parameters": {"binary_data_size": 120}}]
    expected = reference(served, "best", images)
    np.testing.assert_allclose(arrays["probabilities"], expected, atol=1e-6)


def test_binary_per_output_overrides_the_request_default(
    served: TestClient, trained: Trained
) -> None:
    images = trained.x_test[:2]  # sent as [2, 28, 28] in binary
    content, headers = binary_request(
        {"inputs": [tensor(images, parameters={"binary_data_size": images.size * 4})],
         "parameters": {"binary_data_output": True},
         "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}},
                     {"name": "digit"}]},
        images,
    )
    response = served.post("/v2/models/latest/infer", content=content, headers=headers)
    header, arrays = split_response(response)
    probabilities, digit = header["outputs"]
    assert "data" in probabilities and "parameters" not in probabilities
    assert digit["parameters"] == {"binary_data_size": 16} and "data" not in digit
    assert arrays["digit"].tolist() == arrays["probabilities"].argmax(axis=1).tolist()
    expected = reference(served, "latest", images)
    np.testing.assert_allclose(arrays["probabilities"], expected, atol=1e-6)


def test_json_in_binary_out_for_one_output(served: TestClient, trained: Trained) -> None:
    images = trained.x_test[:1].reshape(1, 784)
    body = {"inputs": [tensor(images, data=images.ravel().tolist())],
            "outputs": [{"name": "digit", "parameters": {"binary_data": True}}]}
    response = served.post("/v2/models/best/infer", json=body)
    header, arrays = split_response(response)
    assert int(response.headers[HEADER]) < len(response.content)
    assert arrays["digit"].dtype == np.dtype("<i8") and arrays["digit"].shape == (1,)


def bad(images: np.ndarray, **changes: object) -> dict:
    return {"inputs": [{**tensor(images, data=images.ravel().tolist()), **changes}]}


ONE = np.zeros((1, 784), np.float32)
BAD_JSON = [
    ({"inputs": []}, "inputs"),
    ({"inputs": [{"name": "images"}]}, "inputs.0.shape"),
    ({"inputs": "images"}, "inputs"),
    (bad(ONE, name="pixels"), "unknown input 'pixels'"),
    (bad(ONE, datatype="FP64"), "must be FP32, got FP64"),
    (bad(ONE, datatype="INT64"), "must be FP32, got INT64"),
    (bad(ONE, shape=[1, 783]), "holds 783 values, but the data has 784"),
    (bad(ONE, shape=[2, 392]),
     "expected shape [N, 784], [N, 28, 28] or [N, 28, 28, 1], got [2, 392]"),
    (bad(ONE, shape=[784]), "expected shape"),
    (bad(ONE, shape=[-1, 784]), "expected shape"),
    (bad(ONE, shape=[1001, 784]), "expected shape"),
    (bad(ONE, data=[0.5] * 783 + [1.5]), "in [0, 1]"),
    (bad(ONE, data=["0"] * 784), "list of numbers"),
    (bad(ONE, data=[True] * 784), "list of numbers"),
    (bad(ONE, data=None), "neither data nor binary_data_size"),
    (bad(ONE, data="AAAA"), "list of numbers"),
    (bad(ONE, data=[[0.0] * 392, [0.0] * 391]), "different lengths"),
    (bad(ONE, data=json.loads("[" * 70 + "0" + "]" * 70)), "nests too deeply"),
    ({**bad(ONE), "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
    ({"inputs": bad(ONE)["inputs"] * 2}, "one input"),
]


@pytest.mark.parametrize(("body", "message"), BAD_JSON, ids=[m for _, m in BAD_JSON])
def test_a_bad_json_request_is_a_400(served: TestClient, body: dict, message: str) -> None:
    response = served.post("/v2/models/best/infer", json=body)
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"] and message in response.json()["error"]


def test_nan_and_invalid_json_are_400(served: TestClient) -> None:
    nan = b'{"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32", "data": [NaN'
    for content in (nan + b", 0" * 783 + b"]}]}", b'{"inputs": [', b"\xff\xfe"):
        response = served.post("/v2/models/best/infer", content=content)
        assert response.status_code == 400, response.text
    response = served.post("/v2/models/best/infer", content=nan + b", 0" * 783 + b"]}]}")
    assert "finite" in response.json()["error"]


def test_bad_binary_requests_are_400(served: TestClient) -> None:
    size = {"binary_data_size": ONE.size * 4}
    good_header = {"inputs": [tensor(ONE, parameters=size)]}
    content, headers = binary_request(good_header, ONE)
    cases = [
        (content, {HEADER: str(len(content) + 1)}, "Inference-Header-Content-Length"),
        (content, {HEADER: "abc"}, "Inference-Header-Content-Length"),
        (content, {HEADER: "0"}, "Inference-Header-Content-Length"),
        (content[:-4], headers, "binary_data_size is 3136 but 3132 bytes"),
        (content + b"\0\0\0\0", headers, "binary_data_size is 3136 but 3140 bytes"),
        (*binary_request({"inputs": [tensor(ONE, data=ONE.ravel().tolist())]}, ONE),
         "no input has binary_data_size"),
        (*binary_request({"inputs": [tensor(ONE, data=[0.0] * 784, parameters=size)]}, ONE),
         "both data and binary_data_size"),
        (*binary_request({"inputs": [tensor(np.zeros((2, 784)), parameters=size)]}, ONE),
         "needs 6272 bytes, got 3136"),
        (*binary_request(good_header, np.full((1, 784), np.nan)), "finite"),
        (*binary_request({"inputs": [tensor(ONE, parameters={"binary_data_size": True})]}, ONE),
         "binary_data_size is True"),
    ]
    for body, extra_headers, message in cases:
        response = served.post("/v2/models/best/infer", content=body, headers=extra_headers)
        assert response.status_code == 400, (message, response.text)
        assert message in response.json()["error"], (message, response.json())


def test_unknown_models_and_versions_are_404(served: TestClient, trained: Trained) -> None:
    body = bad(ONE)
    for method, path in [
        ("GET", "/v2/models/77"), ("GET", "/v2/models/worst/ready"),
        ("POST", "/v2/models/77/infer"),
        ("GET", f"/v2/models/best/versions/{trained.weak}"),
        ("GET", f"/v2/models/best/versions/{trained.weak}/ready"),
        ("POST", f"/v2/models/best/versions/{trained.weak}/infer"),
        ("GET", "/v2/nothing"), ("POST", "/v2/models/best/explain"),  # no such path
    ]:
        response = served.request(method, path, json=body if method == "POST" else None)
        assert response.status_code == 404, (path, response.text)
        assert list(response.json()) == ["error"]


def test_a_method_the_protocol_lacks_is_405_in_its_error_shape(served: TestClient) -> None:
    response = served.delete("/v2/models/best")
    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed: DELETE /v2/models/best"}
    assert "GET" in response.headers["Allow"]
    assert served.post("/v2").json() == {"error": "Method Not Allowed: POST /v2"}
    # Outside the protocols' prefixes, the native shape: a detail and a message.
    assert served.get("/nothing").json() == {"detail": "Not Found", "message": "Not Found"}


def test_an_unfinished_job_is_not_ready(client: TestClient, database: Database) -> None:
    job_id = add_job(database, JobState.queued)
    message = {"error": f"job {job_id} is queued: it has no trained model"}
    for method, path in [("GET", f"/v2/models/{job_id}/ready"), ("GET", f"/v2/models/{job_id}"),
                         ("POST", f"/v2/models/{job_id}/infer")]:
        response = client.request(method, path, json=bad(ONE) if method == "POST" else None)
        # Not servable yet: 404, as for a model the server does not have loaded.
        assert (response.status_code, response.json()) == (404, message)
    assert client.get("/v2/models").json() == {"models": []}
    assert client.get("/v2/models/best/ready").status_code == 404


def test_a_huge_body_is_413(served: TestClient) -> None:
    response = served.post("/v2/models/best/infer", content=b"x" * (32 * 1024 * 1024 + 1))
    assert response.status_code == 413 and "limit" in response.json()["error"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_request_is_inflated(
    served: TestClient, trained: Trained, encoding: str
) -> None:
    images = trained.x_test[:2].reshape(2, 784)
    content, headers = binary_request(
        {"inputs": [tensor(images, parameters={"binary_data_size": images.size * 4})]}, images
    )
    packed = gzip.compress(content) if encoding == "gzip" else zlib.compress(content)
    response = served.post("/v2/models/best/infer", content=packed,
                           headers={**headers, "Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(split_response(response)[1]["probabilities"],
                               reference(served, "best", images), atol=1e-6)


def test_a_bad_or_bomb_compressed_body_is_refused(served: TestClient) -> None:
    bomb = gzip.compress(b"0" * (40 * 1024 * 1024))  # 40 MB of zeros in ~40 kB
    cases = [(bomb, "gzip", 413), (b"not gzip", "gzip", 400), (b"{}", "br", 400)]
    for content, encoding, status in cases:
        response = served.post("/v2/models/best/infer", content=content,
                               headers={"Content-Encoding": encoding})
        assert response.status_code == status, (encoding, response.text)


def test_a_request_without_content_type_works_as_tritonclient_sends_it(
    served: TestClient, trained: Trained
) -> None:
    # tritonclient sets Inference-Header-Content-Length but no Content-Type.
    images = trained.x_test[:1].reshape(1, 784)
    content, headers = binary_request(
        {"inputs": [tensor(images, parameters={"binary_data_size": images.size * 4})]}, images
    )
    response = served.post("/v2/models/best/infer", content=content,
                           headers={HEADER: headers[HEADER]})
    assert response.status_code == 200, response.text
