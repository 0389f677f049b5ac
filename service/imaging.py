"""Turn an uploaded photo or drawing of a digit into a 28x28 image the way MNIST was made.

MNIST's digits are white on black, scaled to fit a 20x20 box with their aspect kept, and
placed in a 28x28 field so that their centre of mass sits at its centre. A digit written dark
on white paper, or drawn on a transparent canvas, reads like one only after the same steps.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_SIDE = 4_096
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
    """The upload is over the byte or pixel limit."""


def mnist_like(data: bytes) -> np.ndarray:
    """A PNG or JPEG of one digit as a (28, 28) float32 array in [0, 1], white ink on black."""
    return normalise(_ink(_decode(data)))


def _decode(data: bytes) -> np.ndarray:
    """Grayscale in [0, 1] (1 is white), transparency composited on white paper."""
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
            # Decode a large photo at a reduced scale straight from the DCT: faster, and far
            # more resolution than 20x20 needs.
            image.draft(None, (1_024, 1_024))
        image = ImageOps.exif_transpose(image)  # a phone photo taken sideways
        return _grayscale(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"the image is too large: {exc}") from None
    except ImageTooLarge:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("the file is not a PNG or JPEG image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"the image could not be decoded: {exc}") from None


def _grayscale(image: Image.Image) -> np.ndarray:
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit PNGs
        gray = np.asarray(image, dtype=np.float32) / 65_535.0
        return np.clip(gray, 0.0, 1.0)
    if image.mode in ("RGBA", "LA", "PA") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    ):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        alpha = rgba[..., 3]
        # A transparent pixel is white paper; a canvas's strokes are its opaque pixels.
        return gray * alpha + (1.0 - alpha)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


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
