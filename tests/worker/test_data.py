"""MNIST loading: npz, IDX folders, validation messages, caching, limits."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from worker.data import IDX_FILES, DataError, Mnist, limited, load_mnist


def write_idx(folder: Path, raw: dict[str, np.ndarray], *, compress: bool) -> None:
    """Write the four arrays as IDX files, as on Yann LeCun's page."""
    folder.mkdir(exist_ok=True)
    for key, name in IDX_FILES.items():
        array = raw[key].astype(np.uint8)
        magic = 0x0800 | array.ndim  # unsigned bytes, then the number of dimensions
        header = np.array([magic, *array.shape], dtype=">u4").tobytes()
        content = header + array.tobytes()
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)


@pytest.fixture(scope="module")
def raw(sample_path: Path) -> dict[str, np.ndarray]:
    with np.load(sample_path) as archive:
        return {key: archive[key] for key in archive}


def save_npz(path: Path, raw: dict[str, np.ndarray], **changes: np.ndarray | None) -> Path:
    arrays = {key: changes.get(key, value) for key, value in raw.items()}
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def test_npz_is_flattened_and_scaled(mnist: Mnist, raw: dict[str, np.ndarray]) -> None:
    assert mnist.x_train.shape == (2000, 784) and mnist.x_test.shape == (500, 784)
    assert mnist.x_train.dtype == np.float32
    assert mnist.x_train.min() == 0.0 and mnist.x_train.max() == 1.0
    np.testing.assert_array_equal(mnist.x_test[7] * 255, raw["x_test"][7].reshape(784))
    assert mnist.y_train.dtype == np.int32 and mnist.y_train.shape == (2000,)
    np.testing.assert_array_equal(mnist.y_test, raw["y_test"])


def test_arrays_are_read_only(mnist: Mnist) -> None:
    with pytest.raises(ValueError):
        mnist.x_train[0, 0] = 1.0


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_idx_folder_loads_like_the_npz(
    tmp_path: Path, raw: dict[str, np.ndarray], mnist: Mnist, compress: bool
) -> None:
    write_idx(tmp_path / "idx", raw, compress=compress)
    loaded = load_mnist(tmp_path / "idx")
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(mnist, key))


def test_loads_are_cached_until_the_file_changes(
    tmp_path: Path, raw: dict[str, np.ndarray]
) -> None:
    path = save_npz(tmp_path / "m.npz", raw)
    first = load_mnist(path)
    assert load_mnist(str(path)) is first
    save_npz(path, raw, y_test=np.zeros_like(raw["y_test"]))
    os.utime(path, ns=(1, 1))  # a distinct mtime, whatever the filesystem's resolution
    assert load_mnist(path).y_test.max() == 0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^MNIST file not found: .*nope\.npz$"):
        load_mnist(tmp_path / "nope.npz")


def test_missing_key(tmp_path: Path, raw: dict[str, np.ndarray]) -> None:
    path = save_npz(tmp_path / "mnist.npz", raw, y_test=None)
    with pytest.raises(DataError, match=r"^mnist.npz has no 'y_test' array$"):
        load_mnist(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"x_train": np.zeros((5, 3), np.uint8)},
            r"x_train has shape \(5, 3\), expected \(N, 28, 28\)",
        ),
        ({"y_train": np.zeros(3, np.uint8)}, r"y_train has shape \(3,\), expected \(2000,\)"),
        ({"y_test": np.full(500, 10)}, r"y_test has labels outside 0-9"),
        ({"y_test": np.full(500, -1)}, r"y_test has labels outside 0-9"),
        ({"x_test": np.full((500, 28, 28), 0.5)}, r"x_test has dtype float64, expected integers"),
        ({"x_test": np.full((500, 28, 28), 256)}, r"x_test has pixel values outside 0-255"),
    ],
)
def test_malformed_arrays(
    tmp_path: Path, raw: dict[str, np.ndarray], changes: dict[str, np.ndarray], message: str
) -> None:
    path = save_npz(tmp_path / "bad.npz", raw, **changes)
    with pytest.raises(DataError, match=message):
        load_mnist(path)


@pytest.mark.parametrize("content", [b"not an archive", b"PK\x03\x04garbage"])
def test_unreadable_npz(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"^cannot read broken.npz"):
        load_mnist(path)


def test_npy_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(DataError, match=r"^x.npy is not an .npz archive$"):
        load_mnist(path)


def test_idx_folder_missing_a_file(tmp_path: Path, raw: dict[str, np.ndarray]) -> None:
    write_idx(tmp_path, raw, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    message = r"has no t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte.gz\)"
    with pytest.raises(DataError, match=message):
        load_mnist(tmp_path)


def test_idx_wrong_magic_and_truncation(tmp_path: Path, raw: dict[str, np.ndarray]) -> None:
    write_idx(tmp_path, raw, compress=False)
    images, labels = tmp_path / IDX_FILES["x_test"], tmp_path / IDX_FILES["y_test"]
    images.write_bytes(images.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"idx3-ubyte has 392015 bytes, expected 392016"):
        load_mnist(tmp_path)
    images.write_bytes(labels.read_bytes())
    with pytest.raises(DataError, match=r"has magic number 2049, expected 2051"):
        load_mnist(tmp_path)
    images.write_bytes(b"\0\0")
    with pytest.raises(DataError, match=r"too short to be an IDX file"):
        load_mnist(tmp_path)


def test_bad_gzip(tmp_path: Path, raw: dict[str, np.ndarray]) -> None:
    write_idx(tmp_path, raw, compress=True)
    (tmp_path / f"{IDX_FILES['y_train']}.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"^cannot read train-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path)


def test_download_failure_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline() -> None:
        raise OSError("no network")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError, match=r"no network.*set TAPEFIT_MNIST_PATH"):
        load_mnist(None)


def test_limited_takes_the_first_images(mnist: Mnist) -> None:
    small = limited(mnist, 10, 3)
    assert small.x_train.shape == (10, 784) and small.y_test.shape == (3,)
    np.testing.assert_array_equal(small.x_train, mnist.x_train[:10])
    assert limited(mnist, None, None).x_train.shape == (2000, 784)
