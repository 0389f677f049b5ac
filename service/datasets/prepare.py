"""From what a file holds to a dataset: checked, its classes named, split, its preprocessing
fixed, and written as the canonical .npz that workers train on.

- Classes: the labels' distinct values, integers in numeric order, strings in their own
  order (strings of digits numerically); a label's class is its index in `classes`.
- The split: the file's own test split when it has one; else a seeded (seed 0), stratified
  `test_fraction` of each class (each class keeps at least one training sample), the two
  splits stored in a seeded random order, so `train_limit` takes a mix of classes.
- Preprocessing, computed here and stored with the dataset: tabular features are standardised
  with the training split's mean and standard deviation (a constant feature's is taken as 1);
  pixels are scaled to [0, 1] (uint8 by 1/255; float pixels must already be in [0, 1]).
- The canonical .npz: `x_train, y_train, x_test, y_test`, x as float32 features or uint8 (or
  float32) pixels (N, H, W, C) as uploaded, y as int32 class indices; read back with
  `allow_pickle=False` (service/datasets/storage.py).
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.datasets.errors import DatasetError
from service.datasets.formats import RawDataset

MIN_CLASSES, MAX_CLASSES = 2, 1_000
MAX_CLASS_NAME = 100
MAX_FEATURES = 65_536
MIN_SIDE, MAX_SIDE = 4, 512
SPLIT_SEED = 0
SAMPLES = 8
SAMPLE_SIDE = 64


@dataclass(frozen=True)
class Prepared:
    """A dataset ready to store: its description, and its canonical .npz at `path`."""

    format: str
    kind: str  # image or tabular
    input_shape: list[int]
    classes: list[str]
    train_count: int
    test_count: int
    preprocessing: dict[str, Any]
    samples: bytes | None  # a small .npz of training images (image datasets)
    path: Path
    size_bytes: int
    sha256: str


def prepare(raw: RawDataset, *, test_fraction: float, out: Path) -> Prepared:
    """Check `raw`, split and describe it, and write its canonical .npz to `out`."""
    kind = _kind(raw.x_train)
    has_test = raw.x_test is not None
    names = ("x_train", "y_train", "x_test", "y_test") if has_test else ("x", "y")
    x_train = _features(raw.x_train, kind, names[0]) if kind == "tabular" else \
        _pixels(raw.x_train, names[0])
    y_train = _labels(raw.y_train, len(x_train), names[1], names[0])
    if has_test:
        if raw.x_test.ndim != raw.x_train.ndim or raw.x_test.shape[1:] != raw.x_train.shape[1:]:
            raise DatasetError(f"x_test has shape {raw.x_test.shape}, but x_train "
                               f"{raw.x_train.shape}: they must match but for the count")
        x_test = _features(raw.x_test, kind, "x_test") if kind == "tabular" else \
            _pixels(raw.x_test, "x_test")
        y_test = _labels(raw.y_test, len(x_test), "y_test", "x_test")
    classes, train_index, test_index = _classes(y_train, y_test if has_test else None)
    y_train = train_index[_codes(y_train)]
    if has_test:
        y_test = test_index[_codes(y_test)]
    else:
        x_train, y_train, x_test, y_test = _split(x_train, y_train, test_fraction)
    preprocessing = _preprocessing(kind, x_train)
    size_bytes, sha256 = _write(out, x_train, y_train, x_test, y_test,
                                compress=x_train.dtype == np.uint8)
    return Prepared(
        format=raw.format,
        kind=kind,
        input_shape=list(x_train.shape[1:]),
        classes=classes,
        train_count=len(x_train),
        test_count=len(x_test),
        preprocessing=preprocessing,
        samples=_samples(x_train, y_train) if kind == "image" else None,
        path=out,
        size_bytes=size_bytes,
        sha256=sha256,
    )


def _kind(x: np.ndarray) -> str:
    if x.ndim == 2:
        return "tabular"
    if x.ndim in (3, 4):
        return "image"
    raise DatasetError(
        f"x has shape {x.shape}: expected (N, features) for tabular data, or (N, height, "
        "width) or (N, height, width, channels) for images"
    )


def _features(x: np.ndarray, kind: str, name: str) -> np.ndarray:
    if x.dtype.kind not in "iuf":
        raise DatasetError(f"{name} holds {x.dtype} values; features must be numbers")
    if len(x) == 0:
        raise DatasetError(f"{name} holds no samples")
    if not 1 <= x.shape[1] <= MAX_FEATURES:
        raise DatasetError(f"{name} has {x.shape[1]:,} features; at most {MAX_FEATURES:,}")
    wide = x.astype(np.float64, copy=False)
    bad = ~np.isfinite(wide)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(f"{name}[{row}, {column}] is {wide[row, column]}: features must be "
                           "finite numbers (NaN and infinity are refused)")
    narrow = x.astype(np.float32)
    if not np.isfinite(narrow).all():
        raise DatasetError(f"{name} holds values beyond float32's range (about 3.4e38)")
    return narrow


def _pixels(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., np.newaxis]
    height, width, channels = x.shape[1:]
    if channels not in (1, 3):
        raise DatasetError(f"{name} has {channels} channels per pixel; images have 1 (gray) "
                           "or 3 (RGB)")
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise DatasetError(f"{name}'s images are {height}x{width}; each side must be "
                           f"{MIN_SIDE} to {MAX_SIDE} pixels")
    if len(x) == 0:
        raise DatasetError(f"{name} holds no images")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        if x.min() < 0 or x.max() > 255:
            raise DatasetError(f"{name}'s integer pixels must be 0 to 255, got "
                               f"{x.min()} to {x.max()}")
        return x.astype(np.uint8)
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DatasetError(f"{name} holds NaN or infinite pixels")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise DatasetError(f"{name}'s float pixels must be in [0, 1], got [{low:g}, "
                               f"{high:g}] (save 0-255 pixels as uint8)")
        return x.astype(np.float32)
    raise DatasetError(f"{name} holds {x.dtype} values; pixels must be numbers")


def _labels(y: np.ndarray, count: int, name: str, x_name: str) -> np.ndarray:
    """Labels as a 1-D array of integers or strings, one per sample."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(f"{name} has shape {y.shape}; labels are one per sample, (N,)")
    if len(y) != count:
        raise DatasetError(f"{x_name} has {count:,} samples but {name} has {len(y):,} labels: "
                           "they must have the same length")
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise DatasetError(f"{name} holds numbers that are not whole: labels are integers "
                               "or strings")
        return y.astype(np.int64)
    if y.dtype.kind == "S":
        try:
            y = np.char.decode(y, "utf-8")
        except UnicodeDecodeError:
            raise DatasetError(f"{name} holds byte strings that are not UTF-8") from None
    if y.dtype.kind == "U":
        y = np.char.strip(y)
        if (np.char.str_len(y) == 0).any():
            raise DatasetError(f"{name} holds an empty label")
        return y
    raise DatasetError(f"{name} holds {y.dtype} values; labels are integers or strings")


def _codes(y: np.ndarray) -> np.ndarray:
    """Each label's position among the sorted distinct labels of its own array."""
    return np.unique(y, return_inverse=True)[1].ravel()


def _classes(
    y_train: np.ndarray, y_test: np.ndarray | None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The class names, and for each split the class index of each of its distinct labels
    (in np.unique's order)."""
    train_values = np.unique(y_train)
    test_values = np.unique(_as_kind_of(y_test, y_train)) if y_test is not None \
        else train_values[:0]
    values = sorted(set(train_values.tolist()) | set(test_values.tolist()), key=_order)
    if not MIN_CLASSES <= len(values) <= MAX_CLASSES:
        raise DatasetError(f"the labels name {len(values):,} class"
                           f"{'' if len(values) == 1 else 'es'}; a dataset has "
                           f"{MIN_CLASSES} to {MAX_CLASSES:,}")
    missing = sorted(set(values) - set(train_values.tolist()), key=_order)
    if missing:
        raise DatasetError(f"class {str(missing[0])[:MAX_CLASS_NAME]!r} has test samples but "
                           "no training samples")
    names = [str(value) for value in values]
    long = next((name for name in names if len(name) > MAX_CLASS_NAME), None)
    if long is not None:
        raise DatasetError(f"a label is over {MAX_CLASS_NAME} characters: {long[:40]!r}…")
    position = {value: index for index, value in enumerate(values)}
    train_index = np.array([position[v] for v in train_values.tolist()], dtype=np.int32)
    test_index = np.array([position[v] for v in test_values.tolist()], dtype=np.int32)
    return names, train_index, test_index


def _as_kind_of(y: np.ndarray, like: np.ndarray) -> np.ndarray:
    # A test split's labels must be the same kind as the training split's (1 is not "1").
    if (y.dtype.kind == "U") != (like.dtype.kind == "U"):
        raise DatasetError("y_train and y_test hold different kinds of labels (integers and "
                           "strings)")
    return y


def _order(value: int | str) -> tuple:
    # Integers in numeric order; strings of digits (folder names 0..9) too; then the rest.
    if isinstance(value, int):
        return (0, value, "")
    text = value.strip()
    if text.lstrip("-").isdecimal() and text.isascii():
        return (0, int(text), text)
    return (1, 0, text)


def _split(
    x: np.ndarray, y: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded, stratified train/test split, each in a seeded random order."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_test = min(int(round(len(members) * fraction)), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    train_order = rng.permutation(np.concatenate(train))
    test_order = rng.permutation(np.concatenate(test))
    if len(test_order) == 0:
        raise DatasetError(
            f"too few samples to split off a test set ({len(y)} samples, test_fraction "
            f"{fraction:g}): send more, a larger test_fraction, or a file with its own "
            "test split"
        )
    return x[train_order], y[train_order], x[test_order], y[test_order]


def _preprocessing(kind: str, x_train: np.ndarray) -> dict[str, Any]:
    if kind == "image":
        return {"scale": 1 / 255 if x_train.dtype == np.uint8 else 1.0}
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    std[~(std > 0)] = 1.0  # a constant feature: centred, not divided by zero
    return {"standardize": {"mean": mean.tolist(), "std": std.tolist()}}


def _write(
    out: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
    y_test: np.ndarray, *, compress: bool,
) -> tuple[int, str]:
    arrays = {"x_train": x_train, "y_train": y_train.astype(np.int32),
              "x_test": x_test, "y_test": y_test.astype(np.int32)}
    with out.open("wb") as file:
        (np.savez_compressed if compress else np.savez)(file, **arrays)
    digest, size = hashlib.sha256(), 0
    with out.open("rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _samples(x: np.ndarray, y: np.ndarray) -> bytes:
    """A few training images (the first of each class first), at most SAMPLE_SIDE a side."""
    first = [int(np.flatnonzero(y == label)[0]) for label in np.unique(y)][:SAMPLES]
    rest = [i for i in range(min(len(y), 4 * SAMPLES)) if i not in first]
    chosen = (first + rest)[:SAMPLES]
    pixels = x[chosen]
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
    height, width, channels = pixels.shape[1:]
    scale = SAMPLE_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
        mode = "L" if channels == 1 else "RGB"
        pixels = np.stack([
            np.asarray(Image.fromarray(image.squeeze(-1) if channels == 1 else image, mode)
                       .resize(size, Image.Resampling.BILINEAR)).reshape(size[1], size[0],
                                                                          channels)
            for image in pixels
        ])
    buffer = io.BytesIO()
    np.savez(buffer, x=pixels, y=y[chosen].astype(np.int32))
    return buffer.getvalue()
