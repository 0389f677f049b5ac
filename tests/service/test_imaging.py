"""Uploaded digits prepared the way MNIST was made, and the uploads that are refused."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.imaging import ImageError, ImageTooLarge, mnist_like
from tests.conftest import SAMPLE

DIGITS = np.load(SAMPLE)["x_test"][:40]  # uint8 (40, 28, 28), white on black


def encode(array: np.ndarray, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def on_paper(digit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The digit drawn dark on white at another size (width, height)."""
    return np.asarray(Image.fromarray(255 - digit).resize(size, Image.Resampling.BILINEAR))


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(image.shape)
    return float((ys * image).sum() / image.sum()), float((xs * image).sum() / image.sum())


def distance(out: np.ndarray, digit: np.ndarray) -> float:
    """Mean absolute difference, forgiving a one-pixel shift: centring rounds to whole pixels,
    and MNIST's own centres of mass are up to half a pixel off."""
    return min(
        float(np.abs(np.roll(out, (dy, dx), axis=(0, 1)) - digit / 255).mean())
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


def test_an_mnist_digit_comes_back_as_it_was() -> None:
    # MNIST digits are already cropped, fitted to 20 pixels and centred: nothing to change.
    for digit in DIGITS:
        out = mnist_like(encode(digit))
        assert out.shape == (28, 28) and out.dtype == np.float32
        assert distance(out, digit) < 0.01


@pytest.mark.parametrize("size", [(200, 200), (64, 64), (300, 120)])
def test_a_dark_digit_on_white_at_another_size_reads_like_mnist(size: tuple[int, int]) -> None:
    for digit in DIGITS[:10]:
        out = mnist_like(encode(on_paper(digit, size)))
        assert 0.0 <= out.min() and out.max() == pytest.approx(1.0)
        rows = np.flatnonzero(out.max(axis=1))
        cols = np.flatnonzero(out.max(axis=0))
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20  # fits 20x20
        assert centre_of_mass(out) == pytest.approx((14, 14), abs=0.5)
        if size[0] == size[1]:  # same aspect: close to the original
            assert distance(out, digit) < 0.05


def test_the_aspect_is_kept() -> None:
    stroke = np.full((400, 100), 255, np.uint8)
    stroke[20:380, 40:60] = 0  # a tall "1": 360 high, 20 wide
    out = mnist_like(encode(stroke))
    rows, cols = np.flatnonzero(out.max(axis=1)), np.flatnonzero(out.max(axis=0))
    assert rows[-1] - rows[0] + 1 == 20
    assert cols[-1] - cols[0] + 1 <= 2


def test_a_transparent_canvas_with_dark_strokes_is_composited_on_white() -> None:
    digit = DIGITS[0]
    rgba = np.zeros((280, 280, 4), np.uint8)  # transparent black everywhere
    rgba[..., 3] = np.asarray(Image.fromarray(digit).resize((280, 280)))  # strokes are opaque
    out = mnist_like(encode(rgba))
    assert np.abs(out - mnist_like(encode(on_paper(digit, (280, 280))))).mean() < 0.02


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "I;16"])
def test_colour_palette_and_16_bit_images(mode: str) -> None:
    paper = Image.fromarray(on_paper(DIGITS[1], (100, 100)))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(paper).astype(np.uint16) * 257)
    else:
        image = paper.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    assert distance(mnist_like(buffer.getvalue()), DIGITS[1]) < 0.05


def test_a_jpeg_photo_of_grey_ink_on_grey_paper() -> None:
    # Pencil on off-white paper: low contrast, JPEG noise; the contrast is stretched.
    gray = 200 - (on_paper(DIGITS[2], (240, 240)).astype(np.int16) < 128) * 90
    rgb = np.stack([gray, gray, gray - 10], axis=-1).astype(np.uint8)
    out = mnist_like(encode(rgb, "JPEG", quality=70))
    assert out.max() == pytest.approx(1.0)
    assert centre_of_mass(out) == pytest.approx((14, 14), abs=0.5)
    assert np.corrcoef(out.ravel(), DIGITS[2].ravel())[0, 1] > 0.8


@pytest.mark.parametrize("background", [0, 255, 128])
def test_a_blank_image_has_no_ink(background: int) -> None:
    with pytest.raises(ImageError, match="no ink found"):
        mnist_like(encode(np.full((50, 50), background, np.uint8)))
    with pytest.raises(ImageError, match="no ink found"):
        mnist_like(encode(np.zeros((50, 50, 4), np.uint8)))  # an empty transparent canvas


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, encode(DIGITS[0])[:60],
     encode(DIGITS[0], "GIF"), encode(DIGITS[0], "BMP"), b'{"instances": []}'],
    ids=["empty", "text", "bad-png", "truncated-png", "gif", "bmp", "json"],
)
def test_anything_but_a_png_or_jpeg_is_refused(data: bytes) -> None:
    with pytest.raises(ImageError):
        mnist_like(data)


def test_more_than_5_mb_is_too_large() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    data = encode(noise)
    assert len(data) > 5 * 1024 * 1024
    with pytest.raises(ImageTooLarge, match="bytes"):
        mnist_like(data)


def test_more_than_4096_pixels_a_side_is_too_large() -> None:
    mnist_like(encode(np.full((8, 4096), 255, np.uint8) - np.eye(8, 4096, dtype=np.uint8) * 255))
    with pytest.raises(ImageTooLarge, match="4097x8 pixels"):
        mnist_like(encode(np.full((8, 4097), 255, np.uint8)))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge canvas in a few bytes: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


@pytest.mark.parametrize("size", [(5_000, 5_000), (100_000, 100_000), (4_000, 60_000)])
def test_a_decompression_bomb_is_refused_before_decoding(size: tuple[int, int]) -> None:
    with pytest.raises(ImageTooLarge):
        mnist_like(png_header_only(*size))
