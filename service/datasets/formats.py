"""Reading an uploaded NPZ or CSV into arrays, trusting nothing in it.

- NPZ: `x_train, y_train, x_test, y_test` (MNIST's own layout) or `x, y`. Each array's
  header is read and checked before its data: object dtypes (pickles) are refused
  (`allow_pickle=False` throughout), and an array must fit in the bytes its entry declares,
  which the unpacked limit bounds (service/datasets/archives.py).
- CSV: a header row, numeric feature columns, and a label column of strings or integers.
  A first pass counts the rows and reads the labels; the features are then parsed by numpy's
  C reader into an array whose size was checked against the limit first.

Both return a `RawDataset`; service/datasets/prepare.py checks what it means.
"""

from __future__ import annotations

import csv
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.datasets.archives import is_zip, open_zip
from service.datasets.errors import DatasetError, DatasetTooLarge

LAYOUTS = ({"x_train", "y_train", "x_test", "y_test"}, {"x", "y"})
_LAYOUTS_TEXT = "x_train, y_train, x_test, y_test (MNIST's layout) or x, y"
# csv's own limit on one field, raised: a long label is still refused by prepare.py.
_FIELD_LIMIT = 1024 * 1024


@dataclass
class RawDataset:
    """What a file holds, before it is checked: features or pixels, and labels as given
    (integers or strings). No test split when the file has none."""

    format: str  # npz, csv or images
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    color: str | None = None  # images only: grayscale or rgb, as read


def read_npz(path: Path, *, what: str, max_entries: int, max_unpacked: int) -> RawDataset:
    """The arrays of an .npz upload (see the module's docstring)."""
    if not is_zip(path):
        raise DatasetError(f"{what} is not an NPZ archive (a zip of .npy arrays)")
    with open_zip(path, what=what, max_entries=max_entries, max_unpacked=max_unpacked) as npz:
        members = {}
        for info in npz.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise DatasetError(
                    f"{what} is not an NPZ archive: it holds {info.filename[:100]!r}, "
                    "not only .npy arrays"
                )
            members[info.filename.removesuffix(".npy")] = info
        keys = set(members)
        if keys not in LAYOUTS:
            found = ", ".join(sorted(keys)[:10]) or "no arrays"
            raise DatasetError(f"{what} holds {found}; expected {_LAYOUTS_TEXT}")
        arrays = {key: _read_array(npz, info, what=what) for key, info in members.items()}
    if "x" in arrays:
        return RawDataset("npz", arrays["x"], arrays["y"])
    return RawDataset("npz", arrays["x_train"], arrays["y_train"],
                      arrays["x_test"], arrays["y_test"])


def _read_array(npz: zipfile.ZipFile, info: zipfile.ZipInfo, *, what: str) -> np.ndarray:
    key = info.filename.removesuffix(".npy")
    fmt = np.lib.format
    try:
        with npz.open(info) as file:
            version = fmt.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(file)
            else:
                raise DatasetError(f"{what}: '{key}' is an .npy of version {version}; "
                                   "save it with numpy.savez")
            if dtype.hasobject:
                raise DatasetError(
                    f"{what}: '{key}' is an object array, which would need unpickling; "
                    "pickled or object arrays are refused (save numbers or strings)"
                )
            size = math.prod(shape) * dtype.itemsize
            if size > info.file_size:
                raise DatasetError(
                    f"{what}: '{key}' declares {size:,} bytes of data but holds "
                    f"{info.file_size:,}"
                )
        with npz.open(info) as file:
            return fmt.read_array(file, allow_pickle=False)
    except DatasetError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        # numpy's own "Object arrays cannot be loaded when allow_pickle=False" lands here too.
        raise DatasetError(f"{what}: '{key}' could not be read: {exc}") from None


def read_csv(
    path: Path, *, what: str, label_column: str, max_unpacked: int
) -> RawDataset:
    """The features and labels of a CSV upload (see the module's docstring)."""
    _check_text(path, what)
    header, label_index, labels = _first_pass(path, what=what, label_column=label_column)
    features = len(header) - 1
    if features < 1:
        raise DatasetError(f"{what} has no feature column besides '{label_column}'")
    if not labels:
        raise DatasetError(f"{what} has a header but no rows")
    size = len(labels) * features * 8  # parsed as float64 first
    if size > max_unpacked:
        raise DatasetTooLarge(
            f"{what} holds {len(labels):,} rows of {features:,} features, {size:,} bytes "
            f"parsed; the limit is {max_unpacked:,} (TAPEFIT_MAX_DATASET_UNPACKED_BYTES)"
        )
    columns = [i for i in range(len(header)) if i != label_index]
    try:
        x = np.loadtxt(path, delimiter=",", skiprows=1, usecols=columns, ndmin=2,
                       dtype=np.float64, encoding="utf-8-sig", quotechar='"', comments=None)
    except ValueError as exc:
        raise _not_a_number(path, what, header, columns) or DatasetError(
            f"{what}: a feature column could not be read: {str(exc).splitlines()[0]}"
        ) from None
    if x.shape[0] != len(labels):
        raise DatasetError(f"{what}: {x.shape[0]} rows of features but {len(labels)} labels")
    _check_finite(x, header, columns, what)
    return RawDataset("csv", x, np.array(labels))


def _check_text(path: Path, what: str) -> None:
    with path.open("rb") as file:
        head = file.read(64 * 1024)
    if is_zip(path):
        raise DatasetError(f"{what} is not a CSV file: it is a zip archive")
    if b"\0" in head:
        raise DatasetError(f"{what} is not a CSV file: it holds binary data")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not merely a character cut at the end of the head
            raise DatasetError(f"{what} is not UTF-8 text (byte {exc.start})") from None


def _first_pass(path: Path, *, what: str, label_column: str) -> tuple[list[str], int, list[str]]:
    csv.field_size_limit(_FIELD_LIMIT)
    labels: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            if not header:
                raise DatasetError(f"{what} has no header row")
            header = [name.strip() for name in header]
            duplicates = sorted({name for name in header if header.count(name) > 1})
            if duplicates:
                raise DatasetError(f"{what} names a column twice: {', '.join(duplicates)[:200]}")
            if label_column not in header:
                names = ", ".join(header[:20]) + (", …" if len(header) > 20 else "")
                raise DatasetError(
                    f"{what} has no column '{label_column}' (its columns: {names}); name the "
                    "label column with label_column"
                )
            label_index = header.index(label_column)
            for row in reader:
                if not row:
                    continue  # a blank line, as numpy skips it too
                if len(row) != len(header):
                    raise DatasetError(
                        f"{what}, line {reader.line_num}: {len(row)} fields, but the header "
                        f"has {len(header)}"
                    )
                label = row[label_index].strip()
                if not label:
                    raise DatasetError(f"{what}, line {reader.line_num}: the label is empty")
                labels.append(label)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{what} is not UTF-8 text: {exc.reason}") from None
    except csv.Error as exc:
        raise DatasetError(f"{what} is not a readable CSV: {exc}") from None
    return header, label_index, labels


def _not_a_number(
    path: Path, what: str, header: list[str], columns: list[int]
) -> DatasetError | None:
    """The first feature value that is not a number, named by line and column (numpy's own
    message counts rows its own way)."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        next(reader, None)
        for row in reader:
            for index in columns if row else ():
                try:
                    float(row[index])
                except ValueError:
                    return DatasetError(
                        f"{what}, line {reader.line_num}, column '{header[index]}': "
                        f"{row[index][:40]!r} is not a number"
                    )
    return None


def _check_finite(x: np.ndarray, header: list[str], columns: list[int], what: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(
            f"{what}, data row {row + 1}, column '{header[columns[column]]}': {x[row, column]} "
            "is not a finite number (NaN and infinity are refused)"
        )
