"""End to end, each upload format through a real `tapefit serve` and its worker: uploaded
(over HTTP and with `tapefit datasets upload`), trained, and asked for predictions on raw
inputs, answered in the dataset's own labels, over the native API, TF Serving and KServe V2.
And a worker on PostgreSQL with a data dir of its own training on an uploaded dataset."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.schemas import JobState
from tests.helpers.cluster import Cluster
from tests.helpers.datasets import (
    FRUITS,
    csv_bytes,
    mnist_png_zip,
    mnist_sample,
    npz_bytes,
    png,
    skewed_table,
)
from tests.helpers.processes import TAPEFIT, run_server, wait_until
from tests.helpers.settings import empty_postgres, make_settings

TABULAR = {"model": {"layers": [{"units": 32}, {"units": 3, "activation": "softmax"}]},
           "optimizer": {"name": "adam", "learning_rate": 0.01}, "epochs": 20, "batch_size": 32}


def tapefit(url: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAPEFIT_URL": url}
    return subprocess.run([TAPEFIT, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with run_server(tmp_path_factory.mktemp("datasets"), workers=1) as client:
        client.timeout = httpx.Timeout(60)
        yield client


def train(server: httpx.Client, spec: dict) -> dict:
    response = server.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    return wait_until(
        lambda: (job := server.get(f"/jobs/{job_id}").json())["state"] in
        ("succeeded", "failed", "cancelled") and job,
        180, f"job {job_id}",
    )


def test_a_csv_with_string_labels_end_to_end(server: httpx.Client, tmp_path: Path) -> None:
    x, labels = skewed_table(600)
    path = tmp_path / "fruit stand.csv"
    path.write_bytes(csv_bytes(x, labels, label_column="fruit"))
    url = str(server.base_url)
    uploaded = tapefit(url, "datasets", "upload", str(path), "--name", "fruit",
                       "--label-column", "fruit")
    assert uploaded.returncode == 0, uploaded.stderr
    match = re.match(r"dataset (\d+) 'fruit' \(csv\): tabular 4 · 3 classes \(apple, banana, "
                     r"cherry\) · 480 train / 120 test", uploaded.stdout)
    assert match, uploaded.stdout
    dataset_id = int(match.group(1))
    listed = tapefit(url, "datasets")
    assert re.search(rf"^{dataset_id}\s+fruit\s+csv", listed.stdout, re.M), listed.stdout
    assert re.search(r"^mnist\s+mnist\s+built in", listed.stdout, re.M), listed.stdout

    followed = tapefit(url, "submit", "--dataset", str(dataset_id), "--layers", "32,3",
                       "--optimizer", "adam", "--lr", "0.01", "--epochs", "20",
                       "--batch-size", "32", "--follow")
    assert followed.returncode == 0, followed.stderr
    done = re.search(r"job (\d+) succeeded: test accuracy (\d+\.\d+)%", followed.stdout)
    assert done and float(done.group(2)) >= 90, followed.stdout
    job_id = done.group(1)

    # Raw rows in, the dataset's labels out.
    rows = [[0.05, 1.0, 40.0, 2500.0], [0.2, -2.0, 140.0, 10000.0], [-0.1, 4.0, -80.0, -5000.0]]
    answer = server.post(f"/jobs/{job_id}/predict", json={"instances": rows})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["label"] for p in predictions] == ["banana", "cherry", "apple"]
    assert all(len(p["probabilities"]) == 3 and "digit" not in p for p in predictions)
    bad = server.post(f"/jobs/{job_id}/predict", json={"instances": [[1.0, 2.0]]})
    assert bad.status_code == 422 and "takes [N, 4]" in bad.json()["message"]
    image = server.post(f"/jobs/{job_id}/predict",
                        files={"file": ("x.png", png(np.full((8, 8), 255, np.uint8)), "image/png")})
    assert image.status_code == 422 and "reads rows of 4 features" in image.json()["message"]
    short = {"inputs": [{"name": "images", "shape": [1, 3], "datatype": "FP32",
                         "data": [1.0, 2.0, 3.0]}]}
    refused = server.post(f"/v2/models/{job_id}/infer", json=short)
    assert refused.status_code == 400 and "takes [N, 4]" in refused.json()["error"]

    # The protocols report the real shapes, and V2 gives the label as BYTES when asked.
    metadata = server.get(f"/v1/models/{job_id}/metadata").json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = signature["inputs"]["images"]["tensor_shape"]["dim"]
    assert [d["size"] for d in dims] == ["-1", "4"]
    assert [d["size"] for d in signature["outputs"]["probabilities"]["tensor_shape"]["dim"]] \
        == ["-1", "3"]
    v2 = server.get(f"/v2/models/{job_id}").json()
    assert v2["inputs"][0]["shape"] == [-1, 4]
    assert {"name": "label", "datatype": "BYTES", "shape": [-1]} in v2["outputs"]
    infer = {"inputs": [{"name": "images", "shape": [3, 4], "datatype": "FP32",
                         "data": sum(rows, [])}],
             "outputs": [{"name": "label"}, {"name": "class"}]}
    result = server.post(f"/v2/models/{job_id}/infer", json=infer).json()
    assert result["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [3],
                                    "data": ["banana", "cherry", "apple"]}
    assert result["outputs"][1]["data"] == [FRUITS.index(f) for f in ("banana", "cherry",
                                                                     "apple")]
    binary = dict(infer, outputs=[{"name": "label", "parameters": {"binary_data": True}}])
    response = server.post(f"/v2/models/{job_id}/infer", json=binary)
    header_length = int(response.headers["Inference-Header-Content-Length"])
    raw = response.content[header_length:]
    decoded, at = [], 0
    while at < len(raw):  # each element: its length (4 bytes, little-endian), then the bytes
        (length,) = struct.unpack_from("<I", raw, at)
        decoded.append(raw[at + 4 : at + 4 + length].decode())
        at += 4 + length
    assert decoded == ["banana", "cherry", "apple"]
    predicted = server.post(f"/v1/models/{job_id}:predict", json={"instances": rows}).json()
    assert np.allclose(predicted["predictions"], [p["probabilities"] for p in predictions],
                       atol=1e-5)

    # The dataset is in use no more: it can go, and the model still answers in its labels.
    assert server.delete(f"/datasets/{dataset_id}").status_code == 204
    again = server.post(f"/jobs/{job_id}/predict", json={"instances": rows[:1]})
    assert again.json()["predictions"][0]["label"] == "banana"


def test_an_npz_of_mnist_images_end_to_end(server: httpx.Client) -> None:
    sample = mnist_sample()
    # MNIST's own layout, with the digits named: a dataset of three of them.
    keep = np.isin(sample["y_train"], [0, 1, 7]), np.isin(sample["y_test"], [0, 1, 7])
    names = np.array(["zero", "one", "", "", "", "", "", "seven", "", ""])
    content = npz_bytes(
        x_train=sample["x_train"][keep[0]], y_train=names[sample["y_train"][keep[0]]],
        x_test=sample["x_test"][keep[1]], y_test=names[sample["y_test"][keep[1]]],
    )
    dataset = server.post("/datasets", files={"file": ("three.npz", content)}).json()
    assert dataset["input_shape"] == [28, 28, 1]
    assert dataset["classes"] == ["one", "seven", "zero"]
    dense = {"layers": [{"units": 64}, {"units": 3, "activation": "softmax"}]}
    job = train(server, {"dataset": {"id": dataset["id"]}, "epochs": 3, "batch_size": 32,
                         "model": dense})
    assert job["state"] == "succeeded", job["error"]
    assert job["test_accuracy"] > 0.9
    # Pixels in [0, 1], in any of the shapes an image takes; and an image upload.
    seven = sample["x_test"][sample["y_test"] == 7][0]
    for instance in (seven / 255, (seven / 255).ravel(), (seven / 255)[..., None]):
        answer = server.post(f"/jobs/{job['id']}/predict",
                             json={"instances": [instance.tolist()]}).json()
        assert answer["predictions"][0]["label"] == "seven", answer
    too_bright = server.post(f"/jobs/{job['id']}/predict", json={"instances": [[2.0] * 784]})
    assert too_bright.status_code == 422
    assert "pixel values must be in [0, 1]" in too_bright.json()["message"]
    upload = server.post(f"/jobs/{job['id']}/predict?explain=1",
                         files={"file": ("seven.png", png(seven), "image/png")})
    assert upload.status_code == 200, upload.text
    prediction = upload.json()["predictions"][0]
    assert prediction["label"] == "seven" and len(prediction["image"]) == 28


def test_a_zip_of_png_folders_end_to_end(server: httpx.Client, tmp_path: Path) -> None:
    content = mnist_png_zip(60, classes=(3, 5, 8), layout="split", test_per_class=15,
                            names={3: "three", 5: "five", 8: "eight"})
    dataset = server.post("/datasets", files={"file": ("digits.zip", content)},
                          data={"image_size": "20x20"}).json()
    assert dataset["input_shape"] == [20, 20, 1]
    assert (dataset["train_count"], dataset["test_count"]) == (180, 45)
    convnet = {"layers": [{"type": "conv2d", "filters": 16, "kernel_size": 3},
                          {"type": "max_pool2d"}, {"type": "flatten"},
                          {"units": 3, "activation": "softmax"}]}
    job = train(server, {"dataset": {"id": dataset["id"]}, "model": convnet, "epochs": 8,
                         "batch_size": 16, "optimizer": {"name": "adam",
                                                         "learning_rate": 0.003}})
    assert job["state"] == "succeeded", job["error"]
    assert job["test_accuracy"] > 0.8
    v2 = server.get(f"/v2/models/{job['id']}").json()
    assert v2["inputs"][0]["shape"] == [-1, 20, 20, 1]  # the convnet reads images whole

    # An upload of any size is resized to the dataset's 20 x 20, as its images were: digits
    # the training never saw, drawn three times as large, are read in the folders' names.
    sample = mnist_sample()
    names = {3: "three", 5: "five", 8: "eight"}
    right = total = 0
    for digit, name in names.items():
        for image in sample["x_test"][sample["y_test"] == digit][15:25]:
            big = np.kron(image, np.ones((3, 3), np.uint8))  # 84 x 84
            answer = server.post(f"/jobs/{job['id']}/predict",
                                 files={"file": ("d.png", png(big), "image/png")}).json()
            right += answer["predictions"][0]["label"] == name
            total += 1
    assert right / total >= 0.8, (right, total)
    path = tmp_path / "eight.png"
    path.write_bytes(png(big))
    read = tapefit(str(server.base_url), "predict", str(job["id"]), str(path))
    assert read.returncode == 0, read.stderr
    assert re.fullmatch(rf"{re.escape(str(path))}: (three|five|eight)  \(\d+\.\d%\)\n",
                        read.stdout), read.stdout
    explained = server.post(f"/jobs/{job['id']}/predict?explain=1",
                            files={"file": ("e.png", png(big), "image/png")}).json()
    seen = np.array(explained["predictions"][0]["image"])
    assert seen.shape == (20, 20) and 0.0 <= seen.min() and seen.max() <= 1.0
    # A tabular model takes no images; the image model takes no rows of the wrong size.
    wrong = server.post(f"/jobs/{job['id']}/predict", json={"instances": [[0.5] * 784]})
    assert wrong.status_code == 422 and "[N, 20, 20, 1]" in wrong.json()["message"]


def test_a_worker_on_its_own_disk_trains_on_an_uploaded_dataset(
    tmp_path: Path, postgres_url: str
) -> None:
    """PostgreSQL, an API on one data dir and a worker on another: the worker has only the
    database to get the dataset from, and copies it to its own disk, checked."""
    empty_postgres(postgres_url)
    cluster = Cluster(tmp_path, database_url=postgres_url, lease_timeout=30)
    try:
        api_settings = make_settings(tmp_path / "api-machine", database_url=postgres_url)
        with TestClient(create_app(api_settings)) as api:
            x, labels = skewed_table(600)
            dataset = api.post("/datasets", files={"file": ("fruit.csv",
                                                            csv_bytes(x, labels))}).json()
            job_id = api.post("/jobs", json={**TABULAR, "dataset": {"id": dataset["id"]}}
                              ).json()["id"]
            worker_dir = tmp_path / "worker-machine"
            cluster.start_worker(data_dir=worker_dir)
            job = cluster.wait_final(job_id, timeout=180)
            assert job.state == JobState.succeeded, job.error
            assert job.test_accuracy >= 0.9
            copy = worker_dir / "datasets" / f"{dataset['sha256']}.npz"
            assert copy.is_file() and copy.stat().st_size == dataset["bytes"]
            assert not (tmp_path / "api-machine" / "datasets").exists()  # nothing shared
            answer = api.post(f"/jobs/{job_id}/predict",
                              json={"instances": [[0.05, 1.0, 40.0, 2500.0]]}).json()
            assert answer["predictions"][0]["label"] == "banana"
    finally:
        cluster.close()


def test_bad_uploads_leave_the_server_serving(server: httpx.Client) -> None:
    before = server.get("/datasets").json()["total"]
    bad = [("e.csv", b""), ("b.npz", io.BytesIO(b"PK\x03\x04 not really").getvalue()),
           ("x.zip", b"\x00" * 100), ("t.csv", b"a,label\nx,1\ny,2\n")]
    for name, content in bad:
        response = server.post("/datasets", files={"file": (name, content)})
        assert response.status_code == 422, (name, response.text)
        assert json.loads(response.text)["message"].startswith("file: ")
    assert server.get("/healthz").status_code == 200
    assert server.get("/datasets").json()["total"] == before
