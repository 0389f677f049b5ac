"""A convnet trained by the real worker, served through the native API, TF Serving REST and
KServe V2 with its real input shape, [-1, 28, 28, 1]: metadata say so, [N, 784] inputs are
still taken (reshaped), uploads and the draw pad's PNGs are read. A dense model beside it
keeps [-1, 784]."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.db import Database
from service.migrate import upgrade
from service.queue import jobs
from service.schemas import JobSpec, JobState
from tests.helpers.settings import SAMPLE, TINY_SPEC, make_settings

pytestmark = pytest.mark.slow

CONVNET_SPEC = {
    "model": {"layers": [
        {"type": "conv2d", "filters": 16, "kernel_size": 3},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 32, "kernel_size": 3},
        {"type": "batch_norm"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.25},
        {"units": 10, "activation": "softmax"},
    ]},
    "epochs": 3,
    "batch_size": 64,
}
HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Served:
    client: TestClient
    convnet: int
    dense: int
    tflite: bytes  # the convnet's model, as the database holds it
    x_test: np.ndarray  # (100, 28, 28) float32 in [0, 1]
    y_test: np.ndarray


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from worker.main import Worker  # TensorFlow loads here

    settings = make_settings(tmp_path_factory.mktemp("convnet") / "data")
    upgrade(settings.sqlalchemy_url)
    database = Database(settings.sqlalchemy_url)
    ids = []
    for spec in (CONVNET_SPEC, TINY_SPEC):
        with database.session(write=True) as session:
            ids.append(jobs.submit_job(session=session, spec=JobSpec.model_validate(spec)).id)
        assert Worker(settings).run_once()
    with database.session() as session:
        for job_id in ids:
            job = jobs.get_job(session=session, job_id=job_id)
            assert job.state == JobState.succeeded, job.error
        tflite = jobs.model_artifact(session=session, job_id=ids[0]).content
    sample = np.load(SAMPLE)
    with TestClient(create_app(settings)) as client:
        yield Served(client, ids[0], ids[1], tflite,
                     sample["x_test"][:100].astype(np.float32) / 255, sample["y_test"][:100])
    database.dispose()


def litert(content: bytes, images: np.ndarray) -> np.ndarray:
    """The model run directly, images fed in its own input shape (N, 28, 28, 1)."""
    interpreter = Interpreter(model_content=content)
    inputs = interpreter.get_input_details()[0]
    assert list(inputs["shape_signature"]) == [-1, 28, 28, 1]
    batch = images.reshape(-1, 28, 28, 1)
    interpreter.resize_tensor_input(inputs["index"], list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], batch)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_metadata_report_each_models_real_input_shape(served: Served) -> None:
    for job_id, shape in ((served.convnet, [-1, 28, 28, 1]), (served.dense, [-1, 784])):
        signature = served.client.get(f"/v1/models/{job_id}/metadata").json()["metadata"][
            "signature_def"]["signature_def"]["serving_default"]
        dims = signature["inputs"]["images"]["tensor_shape"]["dim"]
        assert [int(d["size"]) for d in dims] == shape
        outputs = signature["outputs"]["probabilities"]["tensor_shape"]["dim"]
        assert [d["size"] for d in outputs] == ["-1", "10"]
        v2 = served.client.get(f"/v2/models/{job_id}").json()
        assert v2["inputs"] == [{"name": "images", "datatype": "FP32", "shape": shape}]
        versioned = served.client.get(f"/v2/models/{job_id}/versions/{job_id}").json()
        assert versioned["inputs"] == v2["inputs"]
    model = served.client.get(f"/jobs/{served.convnet}/model")
    assert model.status_code == 200 and model.content == served.tflite


def test_every_input_layout_gives_the_models_own_probabilities(served: Served) -> None:
    x = served.x_test[:5]
    expected = litert(served.tflite, x)
    assert (expected.argmax(axis=1) == served.y_test[:5]).mean() >= 0.6
    client, name = served.client, str(served.convnet)
    got = {}
    for shape in ((5, 784), (5, 28, 28), (5, 28, 28, 1)):
        rows = client.post(f"/jobs/{name}/predict",
                           json={"instances": x.reshape(shape).tolist()}).json()
        got[f"native {shape}"] = [p["probabilities"] for p in rows["predictions"]]
        tf_rows = client.post(f"/v1/models/{name}:predict",
                              json={"instances": x.reshape(shape).tolist()})
        got[f"v1 rows {shape}"] = tf_rows.json()["predictions"]
        columns = client.post(f"/v1/models/{name}/versions/{name}:predict",
                              json={"inputs": x.reshape(shape).tolist()})
        got[f"v1 columns {shape}"] = columns.json()["outputs"]
        v2 = client.post(f"/v2/models/{name}/infer", json={"inputs": [
            {"name": "images", "shape": list(shape), "datatype": "FP32",
             "data": x.ravel().tolist()}]})
        (output,) = v2.json()["outputs"]
        assert output["shape"] == [5, 10]
        got[f"v2 json {shape}"] = np.reshape(output["data"], (5, 10))
    header = json.dumps({"inputs": [{"name": "images", "shape": [5, 28, 28, 1],
                                     "datatype": "FP32",
                                     "parameters": {"binary_data_size": 5 * 784 * 4}}],
                         "parameters": {"binary_data_output": True}}).encode()
    binary = client.post(f"/v2/models/{name}/infer", content=header + x.astype("<f4").tobytes(),
                         headers={HEADER: str(len(header))})
    length = int(binary.headers[HEADER])
    got["v2 binary"] = np.frombuffer(binary.content[length:], "<f4").reshape(5, 10)
    for layout, probabilities in got.items():
        np.testing.assert_allclose(probabilities, expected, atol=1e-6, err_msg=layout)


def test_a_shape_no_mnist_model_takes_is_refused_on_every_protocol(served: Served) -> None:
    client, name = served.client, str(served.convnet)
    three_channels = np.zeros((1, 28, 28, 3)).tolist()
    native = client.post(f"/jobs/{name}/predict", json={"instances": three_channels})
    assert native.status_code == 422
    v1 = client.post(f"/v1/models/{name}:predict", json={"instances": three_channels})
    assert v1.status_code == 400
    assert "[N, 28, 28, 1], got [1, 28, 28, 3]" in v1.json()["error"]
    v2 = client.post(f"/v2/models/{name}/infer", json={"inputs": [
        {"name": "images", "shape": [1, 28, 28, 3], "datatype": "FP32",
         "data": [0.0] * 2352}]})
    assert v2.status_code == 400 and "[N, 28, 28, 1]" in v2.json()["error"]


def png(digit: np.ndarray, size: int = 200) -> bytes:
    """A test digit drawn dark on white paper, as a photo or the draw pad would send it."""
    ink = Image.fromarray((digit * 255).astype(np.uint8)).resize((size, size),
                                                                 Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    Image.fromarray(255 - np.asarray(ink)).save(buffer, "PNG")
    return buffer.getvalue()


def test_uploaded_images_are_read_by_the_convnet(served: Served) -> None:
    count = 30
    direct = litert(served.tflite, served.x_test[:count]).argmax(axis=1)
    direct_hits = (direct == served.y_test[:count]).mean()
    digits = []
    for i, digit in enumerate(served.x_test[:count]):
        response = served.client.post(
            f"/jobs/{served.convnet}/predict", params={"explain": "1"} if i == 0 else {},
            files={"file": ("digit.png", png(digit), "image/png")},
        )
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        digits.append(prediction["digit"])
        if i == 0:  # the 28 x 28 image it saw, through the model directly: the same answer
            seen = np.array(prediction["image"], np.float32)
            np.testing.assert_allclose(prediction["probabilities"],
                                       litert(served.tflite, seen[None])[0], atol=1e-6)
    hits = (np.array(digits) == served.y_test[:count]).mean()
    assert hits >= min(0.8, direct_hits - 0.1), (hits, direct_hits)
