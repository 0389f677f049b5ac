"""Turn an uploaded photo or drawing of a digit into a 28x28 image the way MNIST was made.

MNIST's digits are white on black, scaled to fit a 20x20 box with their aspect kept, and
placed in a 28x28 field so that their centre of mass sits at its centre. A digit written dark
on white paper, or drawn on a transparent canvas, reads like one only after the same steps.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from service import images

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_SIDE = 4_096
# The default of TAPEFIT_MAX_DECODED_IMAGE_BYTES: a 12-megapixel phone photo (4032x3024 RGB,
# 37 MB decoded) fits, and so does an 8-bit 4096x4096 RGBA canvas (64 MiB, the most).
MAX_DECODED_BYTES = 64 * 1024 * 1024
# The long side the image is reduced to before any float math: a digit is read at 20x20, and
# float32 copies of a 4096x4096 image would cost 64 MB each.
WORKING_SIDE = 1_024
FORMATS = ("PNG", "JPEG")
SIZE = 28
BOX = 20
# MNIST's centre of mass sits at (14, 14) in pixel-index coordinates (measured on the sample).
CENTRE = 14.0
# Below this contrast between ink and paper the image is blank (JPEG noise, an empty canvas).
MIN_CONTRAST = 0.1
# Ink fainter than this, after stretching the contrast, is paper texture or compression noise.
NOISE_FLOOR = 0.15


class ImageError(ValueError):
    """The upload is not a usable image of a digit."""


class ImageTooLarge(ValueError):
    """The upload is over the byte, pixel or decoded-size limit."""


def mnist_like(data: bytes, *, max_decoded_bytes: int = MAX_DECODED_BYTES) -> np.ndarray:
    """A PNG or JPEG of one digit as a (28, 28) float32 array in [0, 1], white ink on black.

    Refused with ImageTooLarge, before a pixel is decoded, when the file, its sides or its
    decoded size (width x height x channels x bytes per channel) are over the limits.
    """
    return normalise(_ink(_decode(data, max_decoded_bytes)))


def dataset_image(
    data: bytes, shape: tuple[int, int, int], *, max_decoded_bytes: int = MAX_DECODED_BYTES
) -> np.ndarray:
    """A PNG or JPEG as the model of an image dataset reads it: resized to its (height,
    width), gray or RGB as its channels, pixels in [0, 1]; the way its training images were
    read (service/images.py). No MNIST centring: the image is taken whole."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageTooLarge(f"the image is {len(data):,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")
    height, width, channels = shape
    try:
        image = images.open_image(io.BytesIO(data), max_decoded_bytes=max_decoded_bytes)
        pixels = images.to_pixels(image, height=height, width=width, channels=channels)
    except images.ImageTooBig as exc:
        raise ImageTooLarge(str(exc)) from None
    except images.ImageDecodeError as exc:
        raise ImageError(f"the file is not a usable PNG or JPEG image: {exc}") from None
    return pixels.astype(np.float32) / 255.0


def _decode(data: bytes, max_decoded_bytes: int) -> np.ndarray:
    """Grayscale in [0, 1] (1 is white), transparency composited on white paper, at most
    WORKING_SIDE pixels on its long side."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageTooLarge(f"the image is {len(data):,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        # Only the header is read so far: refuse a huge canvas before decoding a single pixel.
        width, height = image.size
        if width > MAX_SIDE or height > MAX_SIDE:
            raise ImageTooLarge(
                f"the image is {width}x{height} pixels; the limit is {MAX_SIDE}x{MAX_SIDE}"
            )
        if image.format == "JPEG":
            # Decode a large photo straight to gray at a reduced scale from the DCT: faster,
            # smaller, and far more resolution than 20x20 needs.
            image.draft("L", (WORKING_SIDE, WORKING_SIDE))
        _check_decoded_size(image, max_decoded_bytes)
        ImageOps.exif_transpose(image, in_place=True)  # a phone photo taken sideways
        return np.asarray(_small_gray(image), dtype=np.float32) / 255.0
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"the image is too large: {exc}") from None
    except ImageTooLarge:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("the file is not a PNG or JPEG image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"the image could not be decoded: {exc}") from None


def _check_decoded_size(image: Image.Image, limit: int) -> None:
    # A small deflated file can hold a huge canvas: count what decoding it would produce.
    # A 16-bit PNG is read through a ";16" raw mode (Pillow keeps only gray at 16 bits after
    # reading, but the file's samples are that wide).
    depth = 2 if any(";16" in str(tile.args) for tile in image.tile) else 1
    channels = len(image.getbands())
    decoded = image.width * image.height * channels * depth
    if decoded > limit:
        raise ImageTooLarge(
            f"the image would take {decoded:,} bytes decoded ({image.width}x{image.height} "
            f"pixels x {channels} channels x {depth} bytes); the limit is {limit:,} bytes "
            "(TAPEFIT_MAX_DECODED_IMAGE_BYTES)"
        )


def _small_gray(image: Image.Image) -> Image.Image:
    """8-bit gray (255 is white), reduced to at most WORKING_SIDE pixels on its long side.

    Every step is 8-bit and no larger than the image Pillow decoded (which keeps RGB in 4
    bytes a pixel). The costliest, transparency keyed on a colour, holds the decoded image, an
    RGBA copy and three gray planes: about 11 bytes a pixel, 176 MiB at 4096x4096. The float
    math comes after, on the small image.
    """
    if image.mode.startswith("I;16"):  # a 16-bit gray PNG: to 8 bits first
        image = image.point(lambda value: value / 257).convert("L")
    elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image if image.mode in ("RGBA", "LA") else image.convert("RGBA")
        # A transparent pixel is white paper; a canvas's strokes are its opaque pixels.
        paper = Image.new("L", image.size, 255)
        paper.paste(rgba.convert("L"), mask=rgba.getchannel("A"))
        image = paper
    elif image.mode != "L":
        image = image.convert("L")
    factor = -(-max(image.size) // WORKING_SIDE)  # rounded up
    # A box average: the grey edges a shrink should have, in one pass and no float copy.
    return image.reduce(factor) if factor > 1 else image


def _ink(gray: np.ndarray) -> np.ndarray:
    """Ink in [0, 1] on a background of 0, whichever way round the picture was."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    # Paper is light: dark ink on it becomes MNIST's bright ink on black.
    ink = 1.0 - gray if background > 0.5 else gray
    paper = 1.0 - background if background > 0.5 else background
    contrast = float(ink.max()) - paper
    if contrast < MIN_CONTRAST:
        raise ImageError("no ink found: the image is blank")
    # Stretch so the paper is 0 and the darkest stroke 1, as in MNIST, pencil or pen alike.
    ink = np.clip((ink - paper) / contrast, 0.0, 1.0)
    ink[ink < NOISE_FLOOR] = 0.0
    return ink


def normalise(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit it in 20x20 keeping its aspect, centre its mass in 28x28."""
    rows = np.flatnonzero(ink.max(axis=1))
    cols = np.flatnonzero(ink.max(axis=0))
    if rows.size == 0:
        raise ImageError("no ink found: the image is blank")
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        # Pillow's resampling is antialiased when it shrinks: MNIST's grey edges.
        resized = Image.fromarray(crop.astype(np.float32)).resize(
            size, Image.Resampling.LANCZOS
        )
        crop = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
        peak = float(crop.max())
        if peak <= 0.0:
            raise ImageError("no ink found: the image is blank")
        crop = crop / peak  # thin strokes shrunk to grey still peak at full ink
    height, width = crop.shape
    ys, xs = np.indices(crop.shape)
    mass = float(crop.sum())
    top = _place(CENTRE - float((ys * crop).sum()) / mass, height)
    left = _place(CENTRE - float((xs * crop).sum()) / mass, width)
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[top : top + height, left : left + width] = crop
    return out


def _place(offset: float, extent: int) -> int:
    # The shift that centres the mass, kept inside the field for lopsided digits.
    return min(max(round(offset), 0), SIZE - extent)
