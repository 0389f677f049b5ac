"""Reading an uploaded zip of image folders: one folder per class of PNG or JPEG files
(`cats/1.png`), optionally under `train/` and `test/`, as Keras' `image_dataset_from_directory`
reads them; a single folder around it all (what zipping a folder makes) is looked through.

Bounded in memory as image predictions are: the zip's directory is checked first
(service/datasets/archives.py); a first pass reads each image's header only (its size, its
mode); every image's sides and decoded size are checked there, before any is decoded; the
array the images go into is sized from those headers and checked against the unpacked limit;
then each image is decoded, resized and copied in, one at a time.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from service import images
from service.datasets.archives import is_zip, open_zip
from service.datasets.errors import DatasetError, DatasetTooLarge
from service.datasets.formats import RawDataset

EXTENSIONS = (".png", ".jpg", ".jpeg")
# The most one image file may hold, as an image upload for a prediction.
MAX_IMAGE_FILE_BYTES = 5 * 1024 * 1024
MIN_SIDE, MAX_SIDE = 4, 512
SPLITS = ("train", "test")


@dataclass(frozen=True)
class _Entry:
    info: zipfile.ZipInfo
    split: str  # train or test
    label: str
    size: tuple[int, int]  # (width, height), from the header
    colour: bool  # its mode can hold colour


def read_image_zip(
    path: Path,
    *,
    what: str,
    image_size: tuple[int, int] | None,
    color: str | None,
    max_entries: int,
    max_unpacked: int,
    max_decoded_image_bytes: int,
) -> RawDataset:
    """The images and labels of a zip of class folders (see the module's docstring).
    `image_size` is (height, width); None: the most common size. `color` is grayscale or
    rgb; None: grayscale unless an image has colour."""
    if not is_zip(path):
        raise DatasetError(f"{what} is not a zip archive")
    with open_zip(path, what=what, max_entries=max_entries, max_unpacked=max_unpacked) as archive:
        entries = _headers(archive, what, max_decoded_image_bytes)
        height, width = image_size or _most_common(entries)
        channels = 1 if color == "grayscale" else 3
        if color is None and not any(entry.colour for entry in entries):
            channels = 1  # every image is gray by its very mode: no need to look
        size = len(entries) * height * width * channels
        if size > max_unpacked:
            raise DatasetTooLarge(
                f"{what}: {len(entries):,} images of {height}x{width}x{channels} take "
                f"{size:,} bytes; the limit is {max_unpacked:,} "
                "(TAPEFIT_MAX_DATASET_UNPACKED_BYTES)"
            )
        pixels = _decode(archive, entries, height, width, channels, what,
                         max_decoded_image_bytes)
    if channels == 3 and color is None and not images.has_colour(pixels):
        pixels = images.to_gray(pixels)
    splits = np.array([entry.split for entry in entries])
    labels = np.array([entry.label for entry in entries])
    train = splits == "train"
    has_test = bool((~train).any())
    return RawDataset(
        "images",
        pixels[train],
        labels[train],
        pixels[~train] if has_test else None,
        labels[~train] if has_test else None,
        color="rgb" if pixels.shape[-1] == 3 else "grayscale",
    )


def _headers(archive: zipfile.ZipFile, what: str, max_decoded: int) -> list[_Entry]:
    files = [info for info in archive.infolist() if not info.is_dir() and not _junk(info)]
    paths = [PurePosixPath(info.filename).parts for info in files]
    for info in files:
        if not info.filename.lower().endswith(EXTENSIONS):
            raise DatasetError(
                f"{what} holds {info.filename[:200]!r}, which is not a .png, .jpg or .jpeg "
                "image"
            )
    if not files:
        raise DatasetError(f"{what} holds no images: expected one folder per class of PNG or "
                           "JPEG files (cats/1.png)")
    # Look through one folder around everything.
    while paths and all(len(p) >= 3 for p in paths) and len({p[0] for p in paths}) == 1:
        paths = [p[1:] for p in paths]
    split_layout = all(len(p) == 3 and p[0] in SPLITS for p in paths)
    if not split_layout and not all(len(p) == 2 for p in paths):
        odd = next(info.filename for info, p in zip(files, paths, strict=True)
                   if len(p) != 2)
        raise DatasetError(
            f"{what}: {odd[:200]!r} is not in a class folder; expected one folder per class "
            "(cats/1.png), optionally under train/ and test/"
        )
    if split_layout and not any(p[0] == "train" for p in paths):
        raise DatasetError(f"{what} has a test/ folder but no train/ folder")
    entries = []
    for info, parts in zip(files, paths, strict=True):
        split, label = (parts[0], parts[1]) if split_layout else ("train", parts[0])
        if info.file_size > MAX_IMAGE_FILE_BYTES:
            raise DatasetTooLarge(
                f"{what}: {info.filename[:200]!r} is {info.file_size:,} bytes; an image may "
                f"be at most {MAX_IMAGE_FILE_BYTES:,}"
            )
        try:
            with archive.open(info) as file:
                image = images.open_image(file, max_decoded_bytes=max_decoded)
                entries.append(_Entry(info, split, label, image.size,
                                      images.may_have_colour(image)))
        except images.ImageTooBig as exc:
            raise DatasetTooLarge(f"{what}: {info.filename[:200]!r}: {exc}") from None
        except images.ImageDecodeError as exc:
            raise DatasetError(f"{what}: {info.filename[:200]!r}: {exc}") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DatasetError(f"{what}: {info.filename[:200]!r} could not be read: {exc}") \
                from None
    return entries


def _junk(info: zipfile.ZipInfo) -> bool:
    """What archivers add beside the images: macOS resource forks, .DS_Store, Thumbs.db."""
    parts = PurePosixPath(info.filename).parts
    return parts[0] == "__MACOSX" or parts[-1].startswith(".") or parts[-1] == "Thumbs.db"


def _most_common(entries: list[_Entry]) -> tuple[int, int]:
    (width, height), _ = Counter(entry.size for entry in entries).most_common(1)[0]
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise DatasetError(
            f"the images are mostly {width}x{height} pixels; give image_size (HxW, each "
            f"side {MIN_SIDE} to {MAX_SIDE}) to resize them"
        )
    return height, width


def _decode(
    archive: zipfile.ZipFile, entries: list[_Entry], height: int, width: int, channels: int,
    what: str, max_decoded: int,
) -> np.ndarray:
    pixels = np.empty((len(entries), height, width, channels), dtype=np.uint8)
    for index, entry in enumerate(entries):
        name = entry.info.filename[:200]
        try:
            data = archive.read(entry.info)
            image = images.open_image(io.BytesIO(data), max_decoded_bytes=max_decoded)
            pixels[index] = images.to_pixels(image, height=height, width=width,
                                             channels=channels)
        except images.ImageTooBig as exc:
            raise DatasetTooLarge(f"{what}: {name!r}: {exc}") from None
        except images.ImageDecodeError as exc:
            raise DatasetError(f"{what}: {name!r} is a corrupt image: {exc}") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DatasetError(f"{what}: {name!r} could not be read: {exc}") from None
    return pixels
