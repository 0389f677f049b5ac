"""Datasets through the API: each format uploaded, checked, split and stored; the list with
the built-in mnist; delete; and the bad-input table, each refused with a 4xx that names the
problem and nothing half-stored. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.api.app import create_app
from service.config import Settings
from service.datasets import storage
from service.db import Database
from service.models import Dataset, DatasetChunk, Job
from tests.helpers.datasets import (
    FRUITS,
    csv_bytes,
    many_entries,
    mnist_png_zip,
    mnist_sample,
    npz_bytes,
    png,
    skewed_table,
    zip_bomb,
    zip_of,
)


def upload(client: TestClient, filename: str, content: bytes, **fields: str):  # noqa: ANN201
    return client.post("/datasets", files={"file": (filename, content)}, data=fields)


def stored(database: Database) -> tuple[int, int]:
    """(datasets, chunks) in the database."""
    with database.session() as session:
        return (session.scalar(select(func.count()).select_from(Dataset)),
                session.scalar(select(func.count()).select_from(DatasetChunk)))


def arrays_of(database: Database, settings: Settings, dataset_id: int) -> dict[str, np.ndarray]:
    path = storage.fetch(database=database, dataset_id=dataset_id,
                         cache_dir=settings.datasets_dir, scratch=settings.data_dir / "tmp")
    return dict(storage.read_arrays(path))


def test_an_npz_in_mnists_layout_keeps_its_split(
    client: TestClient, database: Database, settings: Settings
) -> None:
    sample = mnist_sample()
    response = upload(client, "digits.npz", npz_bytes(**sample))
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["Location"] == f"/datasets/{body['id']}"
    assert body["name"] == "digits" and body["format"] == "npz" and body["kind"] == "image"
    assert body["input_shape"] == [28, 28, 1]
    assert body["classes"] == [str(d) for d in range(10)]
    assert (body["train_count"], body["test_count"]) == (2000, 500)
    assert body["preprocessing"] == {"scale": 1 / 255}
    arrays = arrays_of(database, settings, body["id"])
    # The file's own split, in its own order; labels are class indices.
    assert np.array_equal(arrays["x_train"][..., 0], sample["x_train"])
    assert np.array_equal(arrays["y_test"], sample["y_test"])
    assert arrays["x_train"].dtype == np.uint8


def test_an_npz_of_x_and_y_with_string_labels_is_split_seeded_and_stratified(
    client: TestClient, database: Database, settings: Settings
) -> None:
    rng = np.random.default_rng(3)
    labels = np.array(["cat"] * 100 + ["dog"] * 50 + ["eel"] * 10)
    x = rng.normal(size=(160, 5)).astype(np.float32)
    first = upload(client, "pets.npz", npz_bytes(x=x, y=labels), test_fraction="0.2").json()
    assert first["classes"] == ["cat", "dog", "eel"]
    assert (first["train_count"], first["test_count"]) == (128, 32)
    arrays = arrays_of(database, settings, first["id"])
    assert np.bincount(arrays["y_test"]).tolist() == [20, 10, 2]  # 20% of each class
    assert np.bincount(arrays["y_train"]).tolist() == [80, 40, 8]
    # Shuffled, not sorted by class: the first 20 training samples mix classes.
    assert len(set(arrays["y_train"][:20].tolist())) > 1
    # Seeded: the same file splits the same way.
    again = upload(client, "pets.npz", npz_bytes(x=x, y=labels)).json()
    assert again["sha256"] == first["sha256"]


def test_a_csv_with_string_labels_is_standardised_on_its_training_split(
    client: TestClient, database: Database, settings: Settings
) -> None:
    x, labels = skewed_table(300)
    response = upload(client, "fruit.csv", csv_bytes(x, labels, label_column="fruit"),
                      label_column="fruit", name="Fruit stand")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "Fruit stand" and body["format"] == "csv"
    assert body["kind"] == "tabular" and body["input_shape"] == [4]
    assert body["classes"] == sorted(FRUITS)
    arrays = arrays_of(database, settings, body["id"])
    mean = np.array(body["preprocessing"]["standardize"]["mean"])
    std = np.array(body["preprocessing"]["standardize"]["std"])
    assert np.allclose(mean, arrays["x_train"].mean(axis=0), rtol=1e-5)
    assert np.allclose(std, arrays["x_train"].std(axis=0), rtol=1e-4)
    assert std.min() < 0.1 and std.max() > 1000  # the scales the features came in
    assert arrays["x_train"].dtype == np.float32


def test_a_csv_of_integer_labels_names_classes_in_numeric_order(client: TestClient) -> None:
    x = np.arange(40, dtype=float).reshape(20, 2)
    labels = np.array([2, 10, 1, 2, 10] * 4)
    body = upload(client, "n.csv", csv_bytes(x, labels)).json()
    assert body["classes"] == ["1", "2", "10"]


@pytest.mark.parametrize("layout", ["flat", "split", "wrapped"])
def test_a_zip_of_png_folders_is_an_image_dataset(
    client: TestClient, database: Database, settings: Settings, layout: str
) -> None:
    content = mnist_png_zip(6, classes=(3, 7), layout=layout, names={3: "three", 7: "seven"})
    response = upload(client, "digits.zip", content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "images" and body["kind"] == "image"
    assert body["input_shape"] == [28, 28, 1]  # gray PNGs stay gray
    assert body["classes"] == ["seven", "three"]  # folder names, sorted as Keras does
    counts = (12, 5 * 2) if layout == "split" else (10, 2)  # the split's own, or 20% held out
    assert (body["train_count"], body["test_count"]) == counts
    samples = client.get(f"/datasets/{body['id']}/samples").json()
    k, height, width, channels = samples["shape"]
    assert (height, width, channels) == (28, 28, 1) and 2 <= k <= 8
    assert set(samples["labels"][:2]) == {"seven", "three"}  # one of each class first
    pixels = np.frombuffer(base64.b64decode(samples["pixels"]), np.uint8)
    assert pixels.size == k * 28 * 28 and pixels.max() > 200  # white ink on black


def test_images_in_colour_are_rgb_and_resized_when_asked(client: TestClient) -> None:
    content = mnist_png_zip(5, classes=(1, 2), rgb=True)
    body = upload(client, "tinted.zip", content).json()
    assert body["input_shape"] == [28, 28, 3]
    resized = upload(client, "tinted.zip", content, image_size="16x20", color="grayscale").json()
    assert resized["input_shape"] == [16, 20, 1]


def test_the_list_shows_mnist_first_then_the_uploads_newest_first(
    client: TestClient, settings: Settings
) -> None:
    x, labels = skewed_table(50)
    ids = [upload(client, f"t{i}.csv", csv_bytes(x, labels)).json()["id"] for i in range(3)]
    page = client.get("/datasets").json()
    assert page["total"] == 4
    mnist = page["items"][0]
    assert mnist["builtin"] and mnist["name"] == "mnist" and mnist["id"] is None
    assert mnist["input_shape"] == [28, 28, 1] and len(mnist["classes"]) == 10
    assert (mnist["train_count"], mnist["test_count"]) == (2000, 500)  # the sample's headers
    assert [item["id"] for item in page["items"][1:]] == ids[::-1]
    second = client.get("/datasets?limit=2&offset=2").json()
    assert [item["id"] for item in second["items"]] == ids[1::-1]
    assert client.get("/datasets/mnist").json()["builtin"] is True
    one = client.get(f"/datasets/{ids[0]}").json()
    assert one["preprocessing"]["standardize"]["std"]


def test_delete_removes_the_dataset_and_its_bytes(client: TestClient, database: Database) -> None:
    x, labels = skewed_table(50)
    dataset_id = upload(client, "t.csv", csv_bytes(x, labels)).json()["id"]
    assert stored(database)[1] >= 1
    assert client.delete(f"/datasets/{dataset_id}").status_code == 204
    assert client.get(f"/datasets/{dataset_id}").status_code == 404
    assert client.delete(f"/datasets/{dataset_id}").status_code == 404
    assert stored(database) == (0, 0)
    assert client.delete("/datasets/mnist").status_code == 409


def test_a_dataset_a_queued_or_running_job_uses_cannot_be_deleted(
    client: TestClient, database: Database
) -> None:
    x, labels = skewed_table(50)
    dataset_id = upload(client, "t.csv", csv_bytes(x, labels)).json()["id"]
    with database.session(write=True) as session:
        job = Job(state="running", spec={"dataset": {"id": dataset_id}})
        other = Job(state="queued", spec={"dataset": {"id": dataset_id + 1}})
        session.add_all([job, other])
        session.flush()
        job_id = job.id
    refused = client.delete(f"/datasets/{dataset_id}")
    assert refused.status_code == 409
    assert f"job(s) {job_id}" in refused.json()["message"]
    with database.session(write=True) as session:
        session.get(Job, job_id).state = "succeeded"
    assert client.delete(f"/datasets/{dataset_id}").status_code == 204


def test_a_large_dataset_is_stored_in_bounded_chunks_and_copied_back_checked(
    client: TestClient, database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "CHUNK_BYTES", 4096)
    x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    body = upload(client, "big.npz", npz_bytes(x=x, y=np.arange(2000) % 4)).json()
    datasets, chunks = stored(database)
    assert datasets == 1 and chunks == -(-body["bytes"] // 4096)
    path = storage.fetch(database=database, dataset_id=body["id"],
                         cache_dir=settings.datasets_dir, scratch=settings.data_dir / "tmp")
    assert path.name == f"{body['sha256']}.npz" and path.stat().st_size == body["bytes"]
    # A cached copy that no longer matches its hash is replaced from the database.
    path.write_bytes(b"tampered")
    again = storage.fetch(database=database, dataset_id=body["id"],
                          cache_dir=settings.datasets_dir, scratch=settings.data_dir / "tmp")
    assert again == path and path.stat().st_size == body["bytes"]
    # Bytes in the database that do not match their hash are refused, not trained on.
    path.unlink()
    with database.session(write=True) as session:
        chunk = session.get(DatasetChunk, (body["id"], 0))
        chunk.content = b"x" + chunk.content[1:]
    with pytest.raises(ValueError, match="do not match their recorded sha256"):
        storage.fetch(database=database, dataset_id=body["id"],
                      cache_dir=settings.datasets_dir, scratch=settings.data_dir / "tmp")
    assert not path.exists()


def test_a_killed_uploads_leftovers_are_swept_by_the_next_upload(
    client: TestClient, settings: Settings
) -> None:
    leftover = settings.data_dir / "tmp" / "upload-killed"
    (leftover / "upload").parent.mkdir(parents=True)
    (leftover / "upload").write_bytes(b"half an upload")
    (leftover / ".lock").touch()  # unlocked: its process is gone
    x, labels = skewed_table(50)
    assert upload(client, "t.csv", csv_bytes(x, labels)).status_code == 201
    assert list((settings.data_dir / "tmp").iterdir()) == []


# -- bad input: each a 4xx naming the problem, nothing stored, nothing left on disk ---------

def _sample_x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(30, 3))


def _labels(n: int = 30, classes: int = 3) -> np.ndarray:
    return np.arange(n) % classes


def _object_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}] * 30, dtype=object), y=_labels())
    return buffer.getvalue()


def _nan_x() -> np.ndarray:
    x = _sample_x()
    x[4, 1] = np.nan
    return x


def _inf_x() -> np.ndarray:
    x = _sample_x()
    x[7, 2] = np.inf
    return x


CSV_HEAD = b"a,b,label\n"
GOOD_ROWS = b"".join(f"{i},{i * 2},{'xy'[i % 2]}\n".encode() for i in range(20))
_png = png(np.zeros((28, 28), np.uint8))
_noise = png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))

BAD_INPUT = [
    # (case, file name, content, form fields, status, words the message holds)
    ("pickled or object arrays", "o.npz", _object_npz(), {}, 422, "object array"),
    ("NaN in features", "n.npz", npz_bytes(x=_nan_x(), y=_labels()), {}, 422, "x[4, 1] is nan"),
    ("infinity in features", "i.npz", npz_bytes(x=_inf_x(), y=_labels()), {}, 422, "finite"),
    ("x and y of different lengths", "l.npz", npz_bytes(x=_sample_x(), y=_labels(29)), {}, 422,
     "same length"),
    ("one class", "c.npz", npz_bytes(x=_sample_x(), y=np.zeros(30, int)), {}, 422,
     "1 class; a dataset has 2 to 1,000"),
    ("more than 1,000 classes", "m.npz",
     npz_bytes(x=np.zeros((2002, 2)), y=np.arange(2002) // 2), {}, 422, "1,001 classes"),
    ("an npz of unknown arrays", "k.npz", npz_bytes(features=_sample_x()), {}, 422,
     "expected x_train, y_train, x_test, y_test"),
    ("text in a CSV feature column", "t.csv", CSV_HEAD + GOOD_ROWS + b"3,abc,x\n", {}, 422,
     "line 22, column 'b': 'abc' is not a number"),
    ("NaN in a CSV feature column", "n.csv", CSV_HEAD + GOOD_ROWS + b"nan,1,x\n", {}, 422,
     "NaN and infinity are refused"),
    ("a CSV row of another length", "r.csv", CSV_HEAD + GOOD_ROWS + b"1,2\n", {}, 422,
     "2 fields, but the header has 3"),
    ("a CSV without the label column", "h.csv", b"a,b,kind\n1,2,x\n3,4,y\n", {}, 422,
     "no column 'label' (its columns: a, b, kind)"),
    ("an empty file", "e.csv", b"", {}, 422, "is empty"),
    ("a .npz that is a CSV", "w.npz", CSV_HEAD + GOOD_ROWS, {}, 422, "is not an NPZ archive"),
    ("a .zip that is not a zip", "w.zip", b"hello, world\n", {}, 422, "is not a zip archive"),
    ("a .csv that is a zip", "w.csv", zip_of({"a.png": _png}), {}, 422, "it is a zip archive"),
    ("another extension", "w.png", _png, {}, 422, "name the file .npz"),
    ("a zip with no images", "none.zip", zip_of({"readme/": b""}), {}, 422, "holds no images"),
    ("a corrupt image", "bad.zip",
     zip_of({"a/1.png": _png, "a/2.png": _noise[: len(_noise) // 2], "b/1.png": _png}), {}, 422,
     "'a/2.png'"),
    ("a file that is not an image", "txt.zip", zip_of({"a/1.png": _png, "a/notes.txt": b"x"}),
     {}, 422, "not a .png, .jpg or .jpeg"),
    ("a name that leaves its folder", "up.zip", zip_of({"a/1.png": _png, "../b/1.png": _png}),
     {}, 422, "leaves its folder: '../b/1.png'"),
    ("an absolute name", "abs.zip", zip_of({"a/1.png": _png, "/b/1.png": _png}), {}, 422,
     "leaves its folder: '/b/1.png'"),
    ("a symbolic link", "ln.zip", zip_of({"a/1.png": _png, "b/1.png": b"/etc/passwd"},
                                         symlinks=("b/1.png",)), {}, 422,
     "symbolic link: 'b/1.png'"),
    ("images not in class folders", "flat.zip", zip_of({"1.png": _png, "2.png": _png}), {},
     422, "not in a class folder"),
    ("a test_fraction out of range", "t.csv", CSV_HEAD + GOOD_ROWS, {"test_fraction": "1.5"},
     422, "test_fraction: Input should be less than or equal to 0.9"),
    ("a bad image_size", "d.zip", zip_of({"a/1.png": _png}), {"image_size": "28 by 28"}, 422,
     "image_size: String should match pattern"),
    ("the built-in name", "t.csv", CSV_HEAD + GOOD_ROWS, {"name": "MNIST"}, 422,
     "built-in dataset's name"),
    ("an unknown form field", "t.csv", CSV_HEAD + GOOD_ROWS, {"colour": "rgb"}, 422,
     "colour: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("case", "name", "content", "fields", "status", "words"), BAD_INPUT,
                         ids=[row[0] for row in BAD_INPUT])
def test_bad_input_is_a_4xx_naming_it_and_nothing_is_stored(
    client: TestClient, database: Database, settings: Settings, case: str, name: str,
    content: bytes, fields: dict[str, str], status: int, words: str,
) -> None:
    response = upload(client, name, content, **fields)
    assert response.status_code == status, response.text
    assert words in response.json()["message"], response.json()["message"]
    assert stored(database) == (0, 0)
    assert list((settings.data_dir / "tmp").iterdir()) == []
    assert client.get("/datasets").json()["total"] == 1  # mnist, and only it


@pytest.fixture
def limited(settings: Settings, database: Database) -> Iterator[TestClient]:
    """The API with small dataset limits: 64 KiB uploads, 1 MiB unpacked, 500 entries."""
    small = settings.model_copy(update={
        "max_dataset_bytes": 64 * 1024, "max_dataset_unpacked_bytes": 1024 * 1024,
        "max_dataset_entries": 500,
    })
    with TestClient(create_app(small)) as client:
        yield client


def test_an_upload_over_the_limit_is_413_naming_the_setting(
    limited: TestClient, database: Database
) -> None:
    body = b"a,label\n" + b"1,x\n" * 17_000  # 68 KB: over the file limit, within the body's
    response = upload(limited, "big.csv", body)
    assert response.status_code == 413
    assert "TAPEFIT_MAX_DATASET_BYTES" in response.json()["message"]
    far = upload(limited, "big.csv", body * 4)  # past what the middleware lets through
    assert far.status_code == 413
    assert stored(database) == (0, 0)
    assert limited.get("/healthz").status_code == 200


def test_a_zip_bomb_is_refused_by_its_directory(limited: TestClient, database: Database) -> None:
    bomb = zip_bomb(50 * 1024 * 1024)  # 50 MiB of zeros in about 50 KB
    assert len(bomb) < 64 * 1024
    response = upload(limited, "bomb.zip", bomb)
    assert response.status_code == 413
    assert "TAPEFIT_MAX_DATASET_UNPACKED_BYTES" in response.json()["message"]
    npz = upload(limited, "bomb.npz", bomb)
    assert npz.status_code == 413
    assert stored(database) == (0, 0)


def test_a_zip_of_too_many_entries_is_refused_before_it_is_read(
    limited: TestClient, database: Database
) -> None:
    response = upload(limited, "many.zip", many_entries(600))
    assert response.status_code == 413
    assert "600 entries; the limit is 500" in response.json()["message"]
    assert stored(database) == (0, 0)


def test_a_body_that_is_not_a_multipart_upload_is_refused(client: TestClient) -> None:
    as_json = client.post("/datasets", json={"file": "x"})
    assert as_json.status_code == 415
    assert "multipart/form-data" in as_json.json()["message"]
    no_file = client.post("/datasets", data={"name": "x"}, files={"other": ("a", b"1")})
    assert no_file.status_code == 422
    cut = client.post("/datasets", content=b"--b\r\nContent-Disposition: form-data; "
                      b"name=\"file\"; filename=\"a.csv\"\r\n\r\na,label\n1,x\n",
                      headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert cut.status_code == 422
    assert "ended before its closing boundary" in cut.json()["message"]


def test_unknown_ids_are_404(client: TestClient) -> None:
    for path in ("/datasets/7", "/datasets/07", "/datasets/x", "/datasets/7/samples",
                 "/datasets/mnist/samples"):
        assert client.get(path).status_code == 404, path
    assert client.delete("/datasets/99").status_code == 404
