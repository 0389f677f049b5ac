"""The built-in dataset, MNIST, as the datasets list shows it. Its counts are read from the
headers of TAPEFIT_MNIST_PATH's arrays (nothing else of the file), or are Keras' download's."""

from __future__ import annotations

import gzip
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from service.datasets.schemas import BUILTIN, DatasetDetail

CLASSES = [str(digit) for digit in range(10)]
INPUT_SHAPE = [28, 28, 1]
KERAS_COUNTS = (60_000, 10_000)  # what keras.datasets.mnist downloads
_IDX = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}


def mnist(path: Path | None) -> DatasetDetail:
    """MNIST as a dataset: 28 x 28 gray digits, ten classes."""
    counts = KERAS_COUNTS if path is None else _counts(path)
    return DatasetDetail(
        id=None, name=BUILTIN, builtin=True, format=None, kind="image",
        input_shape=INPUT_SHAPE, classes=CLASSES, train_count=counts[0],
        test_count=counts[1], bytes=None, sha256=None, created_at=None,
        preprocessing={"scale": 1 / 255},
    )


def _counts(path: Path) -> tuple[int | None, int | None]:
    try:
        stat = path.stat()
    except OSError:
        return None, None
    return _read_counts(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4)
def _read_counts(path: Path, _size: int, _mtime_ns: int) -> tuple[int | None, int | None]:
    try:
        if path.is_dir():
            return tuple(_idx_count(path, name) for name in _IDX.values())
        with zipfile.ZipFile(path) as archive:
            return tuple(_npy_count(archive, f"x_{split}.npy") for split in _IDX)
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError):
        return None, None


def _npy_count(archive: zipfile.ZipFile, name: str) -> int:
    with archive.open(name) as file:
        version = np.lib.format.read_magic(file)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, _ = read(file)
    return int(shape[0])


def _idx_count(folder: Path, name: str) -> int:
    plain, packed = folder / name, folder / f"{name}.gz"
    with (plain.open("rb") if plain.is_file() else gzip.open(packed, "rb")) as file:
        header = file.read(8)
    return int.from_bytes(header[4:8], "big")
