"""Dataset files made in the tests: arrays as .npz, CSVs with string labels and skewed scales,
zips of PNG folders drawn from the committed MNIST sample, and broken or hostile archives."""

from __future__ import annotations

import io
import stat
import zipfile

import numpy as np
from PIL import Image

from tests.helpers.settings import SAMPLE

FRUITS = ("apple", "banana", "cherry")


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz of these arrays, as numpy.savez writes it."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def mnist_sample() -> dict[str, np.ndarray]:
    """The committed sample: x_train (2000, 28, 28) uint8 and so on."""
    with np.load(SAMPLE) as archive:
        return {key: archive[key] for key in archive}


def skewed_table(rows: int = 600, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features on very different scales (about 0.05 to 2,500) and three string classes that
    depend on all of them: a net learns it well only once the features are standardised."""
    rng = np.random.default_rng(seed)
    scales = np.array([0.05, 1.0, 40.0, 2500.0])
    z = rng.normal(size=(rows, 4))
    score = z @ np.array([1.0, -1.0, 1.0, 1.0])
    labels = np.array(FRUITS)[np.digitize(score, [-0.7, 0.7])]
    return z * scales + scales, labels


def csv_bytes(x: np.ndarray, labels: np.ndarray, *, label_column: str = "label") -> bytes:
    """A CSV: a header row, the features as f0..fN, and the label column in the middle."""
    names = [f"f{i}" for i in range(x.shape[1])]
    header = [*names[:1], label_column, *names[1:]]
    lines = [",".join(header)]
    for row, label in zip(x, labels, strict=True):
        cells = [repr(float(v)) for v in row]
        lines.append(",".join([*cells[:1], str(label), *cells[1:]]))
    return ("\n".join(lines) + "\n").encode()


def png(pixels: np.ndarray) -> bytes:
    """A PNG of uint8 pixels, (H, W) gray or (H, W, 3) RGB."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def mnist_png_zip(
    per_class: int = 20,
    *,
    classes: tuple[int, ...] = tuple(range(10)),
    layout: str = "flat",
    names: dict[int, str] | None = None,
    rgb: bool = False,
    test_per_class: int = 5,
) -> bytes:
    """A zip of PNG folders drawn from the MNIST sample, one folder per class.
    layout: "flat" (`3/img0.png`), "split" (`train/3/...` and `test/3/...`) or "wrapped"
    (everything under one folder, `digits/3/...`, as zipping a folder makes). With `rgb`,
    each digit is drawn in a colour of its class."""
    sample = mnist_sample()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split, x, y, count in (("train", sample["x_train"], sample["y_train"], per_class),
                                   ("test", sample["x_test"], sample["y_test"], test_per_class)):
            if split == "test" and layout != "split":
                continue
            for digit in classes:
                folder = (names or {}).get(digit, str(digit))
                for n, index in enumerate(np.flatnonzero(y == digit)[:count]):
                    pixels = x[index]
                    if rgb:
                        tint = np.array([(digit * 80) % 256, 255 - digit * 20, 120], np.float32)
                        pixels = (pixels[..., None] / 255.0 * tint).astype(np.uint8)
                    prefix = {"flat": "", "split": f"{split}/", "wrapped": "digits/"}[layout]
                    archive.writestr(f"{prefix}{folder}/img{n}.png", png(pixels))
    return buffer.getvalue()


def zip_of(entries: dict[str, bytes], *, symlinks: tuple[str, ...] = (),
           compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of these entries; those named in `symlinks` are marked as symbolic links."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def zip_bomb(unpacked: int) -> bytes:
    """A small zip whose one entry inflates to `unpacked` bytes of zeros."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("digits/0/bomb.png", "w", force_zip64=True) as entry:
            block = bytes(1024 * 1024)
            for _ in range(unpacked // len(block)):
                entry.write(block)
    return buffer.getvalue()


def many_entries(count: int) -> bytes:
    """A zip of `count` tiny entries, stored (its directory alone is most of it)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"a/{i}.png", b"")
    return buffer.getvalue()
