"""POST /jobs/{id}/predict with an uploaded image, under ids and aliases; the refusals."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.api.routes import predict
from service.serving import imaging
from tests.helpers.images import rgba_png
from tests.helpers.serving import Trained


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def drawn(digit: np.ndarray, size: int) -> np.ndarray:
    """A test digit drawn dark on white paper at size x size pixels."""
    ink = Image.fromarray((digit * 255).astype(np.uint8))
    ink = ink.resize((size, size), Image.Resampling.BILINEAR)
    return 255 - np.asarray(ink)


def upload(client: TestClient, name: str, data: bytes, **params: str):  # noqa: ANN201
    return client.post(
        f"/jobs/{name}/predict", files={"file": ("digit.png", data, "image/png")}, params=params
    )


def test_digits_drawn_at_other_sizes_read_as_their_labels(
    served: TestClient, trained: Trained
) -> None:
    count = 60
    direct = served.post(
        f"/jobs/{trained.good}/predict",
        json={"instances": trained.x_test[:count].reshape(count, -1).tolist()},
    ).json()["predictions"]
    direct_hits = np.mean([p["digit"] for p in direct] == trained.y_test[:count])
    for size, fmt in [(200, "PNG"), (90, "JPEG")]:
        digits = []
        for digit in trained.x_test[:count]:
            response = upload(served, str(trained.good), png(drawn(digit, size), fmt))
            assert response.status_code == 200, response.text
            (prediction,) = response.json()["predictions"]
            assert len(prediction["probabilities"]) == 10 and "image" not in prediction
            probabilities = prediction["probabilities"]
            assert probabilities[prediction["digit"]] == max(probabilities)
            digits.append(prediction["digit"])
        hits = np.mean(np.array(digits) == trained.y_test[:count])
        # As good as the model is on the 28x28 originals, give or take a few digits.
        assert hits >= min(0.8, direct_hits - 0.1), (size, fmt, hits, direct_hits)


def test_explain_returns_the_image_as_the_model_saw_it(
    served: TestClient, trained: Trained
) -> None:
    digit = trained.x_test[0]
    response = upload(served, "best", png(drawn(digit, 200)), explain="1")
    (prediction,) = response.json()["predictions"]
    seen = np.array(prediction["image"])
    assert seen.shape == (28, 28) and 0 <= seen.min() and seen.max() == pytest.approx(1.0)
    again = served.post("/jobs/best/predict", json={"instances": [seen.tolist()]}).json()
    np.testing.assert_allclose(
        again["predictions"][0]["probabilities"], prediction["probabilities"], atol=1e-6
    )


def test_an_upload_works_under_the_aliases(served: TestClient, trained: Trained) -> None:
    data = png(drawn(trained.x_test[1], 120))
    by_alias = {name: upload(served, name, data).json() for name in ("best", "latest")}
    assert by_alias["best"] == upload(served, str(trained.good), data).json()
    assert by_alias["latest"] == upload(served, str(trained.weak), data).json()
    assert by_alias["best"] != by_alias["latest"]


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"this is not an image", 422, "not a PNG or JPEG"),
        (b"GIF89a" + b"\0" * 100, 422, "not a PNG or JPEG"),
        (png(np.full((64, 64), 255, np.uint8)), 422, "no ink found"),
        (png(np.zeros((64, 64, 4), np.uint8)), 422, "no ink found"),
        (png(np.full((4, 5000), 255, np.uint8)), 413, "5000x4 pixels"),
    ],
    ids=["text", "gif", "blank", "empty-canvas", "too-wide"],
)
def test_a_bad_upload_is_a_clear_4xx(
    served: TestClient, trained: Trained, data: bytes, status: int, message: str
) -> None:
    response = upload(served, "best", data)
    assert response.status_code == status, response.text
    body = response.json()  # a 422's `message` names the problem; a 413's `detail` does
    assert message in (body["message"] if status == 422 else body["detail"])


def test_a_small_png_that_decodes_huge_is_413_naming_the_setting(served: TestClient) -> None:
    response = upload(served, "best", rgba_png())  # 137 KB, 128 MiB decoded
    assert response.status_code == 413
    assert "134,217,728 bytes decoded" in response.json()["detail"]
    assert "(TAPEFIT_MAX_DECODED_IMAGE_BYTES)" in response.json()["detail"]


def test_the_decoded_size_limit_is_the_setting(trained: Trained) -> None:
    settings = trained.settings.model_copy(update={"max_decoded_image_bytes": 1024 * 1024})
    inside = png(drawn(trained.x_test[0], 1024))  # 1,048,576 bytes of gray
    outside = png(np.stack([drawn(trained.x_test[0], 600)] * 3, axis=-1))  # 1,080,000
    with TestClient(create_app(settings)) as client:
        assert upload(client, "best", inside).status_code == 200
        response = upload(client, "best", outside)
    assert response.status_code == 413
    assert "the limit is 1,048,576 bytes" in response.json()["detail"]


def test_past_the_concurrent_decodes_an_upload_waits_then_gets_503(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = trained.settings.model_copy(update={"max_concurrent_decodes": 1})
    decoding, finish = threading.Event(), threading.Event()
    read = imaging.mnist_like

    def held_read(data: bytes, **limits: int) -> np.ndarray:
        decoding.set()
        assert finish.wait(30)  # the decode slot stays taken until the test lets go
        return read(data, **limits)

    monkeypatch.setattr(imaging, "mnist_like", held_read)
    monkeypatch.setattr(predict, "DECODE_WAIT", 0.2)
    data = png(drawn(trained.x_test[0], 100))
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(upload, client, "best", data)
        assert decoding.wait(30)
        refused = upload(client, "best", data)
        finish.set()
        assert first.result().status_code == 200
        assert upload(client, "best", data).status_code == 200  # the slot is free again
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["detail"] == (
        "every image decode slot is busy (TAPEFIT_MAX_CONCURRENT_DECODES=1); retry in 1 s"
    )


def test_an_upload_over_5_mb_is_413(served: TestClient) -> None:
    just_over = upload(served, "best", b"\x89PNG" + b"\0" * (5 * 1024 * 1024 - 3))
    assert just_over.status_code == 413
    assert "the image is 5,242,881 bytes" in just_over.json()["detail"]
    # Far over: refused while the body streams in, before the form is parsed.
    far_over = upload(served, "best", b"\0" * (8 * 1024 * 1024))
    assert far_over.status_code == 413
    assert "the request body is" in far_over.json()["detail"]


def test_the_form_needs_a_file_named_file(served: TestClient) -> None:
    wrong_field = served.post("/jobs/best/predict", files={"image": ("d.png", b"x", "image/png")})
    assert wrong_field.status_code == 422
    assert "'file'" in wrong_field.json()["message"]
    not_a_file = served.post("/jobs/best/predict", data={"file": "hello"},
                             files={"other": ("x", b"", "text/plain")})
    assert not_a_file.status_code == 422


def test_an_upload_to_an_unknown_or_unfinished_job(client: TestClient) -> None:
    data = png(255 - np.eye(40, dtype=np.uint8) * 255)
    assert upload(client, "best", data).status_code == 404
    assert upload(client, "77", data).status_code == 404
    job_id = client.post("/jobs").json()["id"]
    response = upload(client, str(job_id), data)
    assert response.status_code == 409
    assert response.json()["detail"] == f"job {job_id} is queued: it has no trained model"


def test_openapi_documents_both_bodies_and_every_serving_route(served: TestClient) -> None:
    schema = served.get("/openapi.json").json()
    body = schema["paths"]["/jobs/{job_id}/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["multipart/form-data"]["schema"]["required"] == ["file"]
    for path in ("/jobs/{job_id}/model", "/v1/models/{name}:predict", "/v1/models/{name}/metadata",
                 "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
                 "/v2/health/ready"):
        assert path in schema["paths"], path
    serving = [p for p in schema["paths"] if p.startswith(("/v1/", "/v2")) or "/predict" in p]
    for path in serving:
        for operation in schema["paths"][path].values():
            assert operation.get("description"), path  # every route explains itself


def test_a_malformed_multipart_form_is_422(served: TestClient) -> None:
    # Found by the schemathesis run: the form parser's own 400 is invalid input to us.
    too_many = {f"field{i}": (None, "x") for i in range(12)}
    response = served.post("/jobs/best/predict", files=too_many)
    assert response.status_code == 422
    assert "multipart form could not be read" in response.json()["message"]
