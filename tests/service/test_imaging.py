"""Uploaded digits prepared the way MNIST was made, and the uploads that are refused."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageFile

from service.config import Settings
from service.serving.imaging import MAX_DECODED_BYTES, ImageError, ImageTooLarge, mnist_like
from tests.helpers.images import png_header_only, rgba_png
from tests.helpers.settings import SAMPLE

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


@pytest.mark.parametrize("size", [(5_000, 5_000), (100_000, 100_000), (4_000, 60_000)])
def test_a_decompression_bomb_is_refused_before_decoding(size: tuple[int, int]) -> None:
    with pytest.raises(ImageTooLarge):
        mnist_like(png_header_only(*size))


def test_the_default_decoded_size_limit_is_the_settings_default() -> None:
    assert Settings().max_decoded_image_bytes == MAX_DECODED_BYTES == 64 * 1024 * 1024


def test_a_small_file_that_decodes_huge_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = rgba_png()
    assert len(data) < 200_000  # inside the 5 MB and 4096x4096 limits

    def decode(_: object) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    with pytest.raises(ImageTooLarge) as refused:
        mnist_like(data)
    message = str(refused.value)
    assert "134,217,728 bytes decoded (4096x4096 pixels x 4 channels x 2 bytes)" in message
    assert "the limit is 67,108,864 bytes (TAPEFIT_MAX_DECODED_IMAGE_BYTES)" in message


@pytest.mark.parametrize(
    ("mode", "decoded"),
    [("L", 300 * 200), ("RGB", 300 * 200 * 3), ("RGBA", 300 * 200 * 4), ("I;16", 300 * 200 * 2)],
)
def test_the_decoded_size_counts_channels_and_bytes_per_channel(mode: str, decoded: int) -> None:
    paper = on_paper(DIGITS[3], (300, 200))
    image = (Image.fromarray(paper.astype(np.uint16) * 257) if mode == "I;16"
             else Image.fromarray(paper).convert(mode))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    mnist_like(data, max_decoded_bytes=decoded)  # exactly at the limit: read
    with pytest.raises(ImageTooLarge, match=f"{decoded:,} bytes decoded"):
        mnist_like(data, max_decoded_bytes=decoded - 1)


def test_a_12_megapixel_phone_photo_reads_like_the_digit() -> None:
    # 4032x3024 RGB: 37 MB decoded, inside the default; a JPEG is decoded at a reduced scale.
    digit = DIGITS[4]
    photo = np.full((3024, 4032), 235, np.uint8)  # off-white paper
    photo[512:2512, 1016:3016] = on_paper(digit, (2000, 2000)) * (235 / 255)
    rgb = np.stack([photo, photo, photo - 5], axis=-1)
    out = mnist_like(encode(rgb, "JPEG", quality=90))
    assert distance(out, digit) < 0.05
    assert centre_of_mass(out) == pytest.approx((14, 14), abs=0.5)


def test_a_photo_taken_sideways_is_turned_upright() -> None:
    upright = np.stack([on_paper(DIGITS[7], (1200, 1200))] * 3, axis=-1)
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: display it rotated 90 degrees clockwise
    tagged, untagged = io.BytesIO(), io.BytesIO()
    sideways.save(tagged, "JPEG", exif=exif)
    sideways.save(untagged, "JPEG")
    assert distance(mnist_like(tagged.getvalue()), DIGITS[7]) < 0.05
    assert distance(mnist_like(untagged.getvalue()), DIGITS[7]) > 0.1


def test_a_canvas_at_the_limit_reads_and_its_float_math_is_on_a_small_copy() -> None:
    # 4096x4096 RGBA at 8 bits is 64 MiB decoded, exactly the default limit. Float32 copies
    # of it would take 256 MiB each; every array numpy allocates must stay small.
    digit = DIGITS[5]
    rgba = np.zeros((4096, 4096, 4), np.uint8)  # transparent, strokes opaque black
    rgba[..., 3] = np.asarray(Image.fromarray(digit).resize((4096, 4096)))
    data = encode(rgba)
    del rgba
    tracemalloc.start()
    try:
        out = mnist_like(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert distance(out, digit) < 0.05
    assert peak < 24 * 1024 * 1024, f"{peak:,} bytes traced"


def test_the_hand_built_pngs_are_what_they_claim() -> None:
    small = rgba_png(64, bits=16, ink=True)
    with Image.open(io.BytesIO(small)) as image:
        assert image.size == (64, 64) and image.mode == "RGBA"
        pixels = np.asarray(image)
    assert (pixels[..., 3] == 255).all()
    assert (pixels[16:48, 30:34, :3] == 0).all() and (pixels[:16, ..., :3] == 255).all()
    assert mnist_like(rgba_png(64, bits=8, ink=True)).max() == pytest.approx(1.0)
    with pytest.raises(ImageError, match="no ink"):
        mnist_like(rgba_png(64, bits=8))
