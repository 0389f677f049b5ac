"""A job's data: the built-in MNIST (an .npz, a folder of IDX files, or keras' download), or
an uploaded dataset (service/datasets/), fetched from the database into this worker's data
dir, checked against its sha256, and prepared the way it was at upload.

Every way in ends in the same shape: x float32 rows (N, values per sample), y int32 class
indices. MNIST gets the book's preparation (flatten to 784 values, divide by 255); an
uploaded image dataset is scaled to [0, 1] too; a tabular one is standardised with its
training split's mean and standard deviation, which its exported model then includes. A
worker runs many jobs on the same data, so prepared arrays are cached in-process, keyed by
the files' identity (path, size, mtime; an upload's sha256).
"""

from __future__ import annotations

import gzip
import json
import math
import zipfile
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from service.config import Settings
from service.datasets import jobs as job_datasets
from service.datasets import storage
from service.datasets.errors import DatasetError, DatasetNotFound
from service.db import Database
from service.schemas import DatasetSpec

KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_CACHE_SIZE = 2  # the full MNIST prepared is ~220 MB; a worker rarely uses more than one


class DataError(Exception):
    """The data set cannot be used; the message tells the user what is wrong."""


@dataclass(frozen=True, eq=False)
class Mnist:
    """Prepared data, read-only: x float32 (N, values per sample), y int32 (N,) class indices.
    For MNIST itself, x is (N, 784) in [0, 1] and y the digits 0-9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_mnist(path: str | Path | None) -> Mnist:
    """Load MNIST from an .npz, an IDX folder, or (path None) keras' download.

    Raises DataError for a missing or malformed source.
    """
    if path is None:
        return _load_keras()
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"MNIST file not found: {path}")
    resolved = path.resolve()
    if resolved.is_dir():
        files = {key: _find_idx(resolved, name) for key, name in IDX_FILES.items()}
        return _load_idx(tuple((key, f, *_identity(f)) for key, f in files.items()))
    return _load_npz(resolved, *_identity(resolved))


def limited(data: Mnist, train_limit: int | None, test_limit: int | None) -> Mnist:
    """The first `train_limit` training and `test_limit` test images (None: all)."""
    return replace(
        data,
        x_train=data.x_train[:train_limit],
        y_train=data.y_train[:train_limit],
        x_test=data.x_test[:test_limit],
        y_test=data.y_test[:test_limit],
    )


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@lru_cache(maxsize=_CACHE_SIZE)
def _load_npz(path: Path, size: int, mtime_ns: int) -> Mnist:
    # size and mtime_ns only key the cache: a rewritten file is parsed again.
    try:
        # Our own file handle: np.load leaks its handle when a path is not a valid zip.
        with path.open("rb") as file:
            archive = np.load(file, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path.name} is not an .npz archive")
            with archive:
                for key in KEYS:
                    if key not in archive:
                        raise DataError(f"{path.name} has no '{key}' array")
                arrays = {key: archive[key] for key in KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"cannot read {path.name}: {error}") from None
    return _prepare(arrays)


def _find_idx(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST folder {folder} has no {name} (or {name}.gz)")


@lru_cache(maxsize=_CACHE_SIZE)
def _load_idx(files: tuple[tuple[str, Path, int, int], ...]) -> Mnist:
    arrays = {}
    for key, path, _size, _mtime in files:
        magic = _IMAGES_MAGIC if key.startswith("x") else _LABELS_MAGIC
        arrays[key] = _read_idx(path, magic)
    return _prepare(arrays)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file: a big-endian magic (0x08 = unsigned bytes, then ndim) and dims."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read {path.name}: {error}") from None
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"{path.name} is too short to be an IDX file")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path.name} has magic number {found}, expected {magic}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise DataError(f"{path.name} has {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_keras() -> Mnist:
    import keras  # imported here: only this path needs it, and it is slow to import

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:
        # Any failure (network, disk, a corrupt cached download) means the same to the user.
        raise DataError(
            f"could not download MNIST ({error}); set TAPEFIT_MNIST_PATH to a local "
            "mnist.npz or a folder of IDX files"
        ) from None
    return _prepare({"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test})


def _prepare(arrays: dict[str, np.ndarray]) -> Mnist:
    """Check the raw arrays and apply the book's preparation."""
    prepared = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.shape[0] == 0:
            raise DataError(f"x_{split} has shape {x.shape}, expected (N, 28, 28) with N > 0")
        if y.shape != (x.shape[0],):
            raise DataError(f"y_{split} has shape {y.shape}, expected ({x.shape[0]},)")
        for name, array, high in ((f"x_{split}", x, 255), (f"y_{split}", y, 9)):
            if array.dtype.kind not in "iu":
                raise DataError(f"{name} has dtype {array.dtype}, expected integers")
            if array.min() < 0 or array.max() > high:
                what = "pixel values outside 0-255" if high == 255 else "labels outside 0-9"
                raise DataError(f"{name} has {what}")
        images = x.reshape(len(x), 28 * 28).astype(np.float32)
        images /= 255
        prepared[f"x_{split}"] = images
        prepared[f"y_{split}"] = y.astype(np.int32)
    for array in prepared.values():
        # The cache shares these arrays between jobs: no job may change them.
        array.setflags(write=False)
    return Mnist(**prepared)


@dataclass(frozen=True)
class DataInfo:
    """What a job's model reads and answers in: one sample's shape, the class names, and the
    standardisation (mean, std) its export includes (tabular datasets only)."""

    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    standardize: tuple[np.ndarray, np.ndarray] | None = None


MNIST_INFO = DataInfo((28, 28, 1), tuple(str(digit) for digit in range(10)))


def load_job_data(
    spec: DatasetSpec, *, settings: Settings, database: Database, job_id: int
) -> tuple[Mnist, DataInfo]:
    """The data job `job_id`'s spec names, limited as it asks, and what its model reads.
    DataError when the dataset is gone or unusable; a full disk (no room for the copy) is
    raised."""
    if spec.id is None:
        data, info = load_mnist(settings.mnist_path), MNIST_INFO
    else:
        data, info = load_uploaded(spec.id, settings=settings, database=database,
                                   job_id=job_id)
    return limited(data, spec.train_limit, spec.test_limit), info


def load_uploaded(
    dataset_id: int, *, settings: Settings, database: Database, job_id: int
) -> tuple[Mnist, DataInfo]:
    """An uploaded dataset, prepared: copied once into this worker's data dir (no shared
    disk is needed) and checked against the sha256 its row holds. The job keeps what the
    dataset is (its labels, for its model), if its submission did not already."""
    try:
        with database.session(write=True) as session:
            row = storage.get(session=session, dataset_id=dataset_id)
            shape, classes, preprocessing = row.input_shape, row.classes, row.preprocessing
            job_datasets.attach(session=session, job_id=job_id, dataset=row)
        path = storage.fetch(database=database, dataset_id=dataset_id,
                             cache_dir=settings.datasets_dir, scratch=settings.data_dir / "tmp")
    except DatasetNotFound:
        raise DataError(f"dataset {dataset_id} was deleted: there is nothing to train on") \
            from None
    except DatasetError as exc:
        raise DataError(str(exc)) from None
    standardize = None
    if "standardize" in preprocessing:
        standardize = tuple(np.array(preprocessing["standardize"][key], np.float32)
                            for key in ("mean", "std"))
    data = _prepare_upload(path, *_identity(path), json.dumps(preprocessing, sort_keys=True))
    return data, DataInfo(tuple(shape), tuple(classes), standardize)


@lru_cache(maxsize=_CACHE_SIZE)
def _prepare_upload(path: Path, size: int, mtime_ns: int, preprocessing: str) -> Mnist:
    # size and mtime_ns key the cache (the file is named by its sha256); `preprocessing` is
    # the row's, as JSON: the same transform the export includes, applied once per dataset.
    arrays = storage.read_arrays(path)
    steps = json.loads(preprocessing)
    prepared = {}
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        rows = x.reshape(len(x), -1)
        if "standardize" in steps:
            mean = np.array(steps["standardize"]["mean"], np.float64)
            std = np.array(steps["standardize"]["std"], np.float64)
            values = ((rows - mean) / std).astype(np.float32)
        else:  # pixels: uint8 scaled by 1/255, float ones already in [0, 1]
            values = rows.astype(np.float32) * np.float32(steps.get("scale", 1.0))
        prepared[f"x_{split}"] = values
        prepared[f"y_{split}"] = arrays[f"y_{split}"].astype(np.int32)
    for array in prepared.values():
        array.setflags(write=False)
    return Mnist(**prepared)
