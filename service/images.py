"""One PNG or JPEG decoded into a fixed shape, bounded: (H, W, C) uint8 pixels, C 1 (gray)
or 3 (RGB). The images of an uploaded image-folder dataset are read this way, and so are the
uploads to a model trained on one, so a model sees its uploads as it saw its training images.

The header is read first, and an image whose sides or decoded size (width x height x channels
x bytes per channel) are over the limits is refused before a pixel is decoded. A JPEG is
decoded at a reduced scale when its target is small. Transparency is composited on white.
"""

from __future__ import annotations

from typing import IO

import numpy as np
from PIL import Image, ImageOps

FORMATS = ("PNG", "JPEG")
MAX_SIDE = 4_096
# Below this spread between an image's channels, an RGB image is gray (JPEG adds a little).
COLOUR_TOLERANCE = 12
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class ImageDecodeError(ValueError):
    """The bytes are not a PNG or JPEG that can be decoded."""


class ImageTooBig(ValueError):
    """The image's sides or decoded size are over the limits."""


def open_image(source: IO[bytes], *, max_decoded_bytes: int) -> Image.Image:
    """The image in `source`, its header read and checked, no pixel decoded yet."""
    try:
        image = Image.open(source, formats=FORMATS)
        width, height = image.size
        if width > MAX_SIDE or height > MAX_SIDE:
            raise ImageTooBig(
                f"the image is {width}x{height} pixels; the limit is {MAX_SIDE}x{MAX_SIDE}"
            )
        decoded = decoded_bytes(image)
        if decoded > max_decoded_bytes:
            raise ImageTooBig(
                f"the image would take {decoded:,} bytes decoded ({width}x{height} pixels); "
                f"the limit is {max_decoded_bytes:,} (TAPEFIT_MAX_DECODED_IMAGE_BYTES)"
            )
        return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooBig(f"the image is too large: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not a PNG or JPEG image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, ImageTooBig):
            raise
        raise ImageDecodeError(f"the image could not be read: {exc}") from None


def decoded_bytes(image: Image.Image) -> int:
    """What decoding `image` would take: width x height x channels x bytes per channel."""
    depth = 2 if any(";16" in str(tile.args) for tile in image.tile) else 1
    return image.width * image.height * len(image.getbands()) * depth


def may_have_colour(image: Image.Image) -> bool:
    """False when the image's mode can only hold gray; True when its pixels must be looked at."""
    return image.mode not in _GRAY_MODES


def to_pixels(image: Image.Image, *, height: int, width: int, channels: int) -> np.ndarray:
    """The opened image decoded, as (height, width, channels) uint8: gray or RGB, transparency
    on white, resized (aspect not kept, as Keras' image_dataset_from_directory does)."""
    mode = "L" if channels == 1 else "RGB"
    try:
        if image.format == "JPEG":
            image.draft(mode, (width, height))  # decode at a reduced scale when it can
        ImageOps.exif_transpose(image, in_place=True)
        image = _flat(image, mode)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"the image could not be decoded: {exc}") from None
    return pixels.reshape(height, width, channels)


def has_colour(pixels: np.ndarray) -> bool:
    """True when RGB pixels (..., 3) are not all gray (within COLOUR_TOLERANCE)."""
    spread = pixels.max(axis=-1).astype(np.int16) - pixels.min(axis=-1)
    return bool(spread.max(initial=0) > COLOUR_TOLERANCE)


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """RGB pixels (..., 3) as gray (..., 1), with Pillow's weights (ITU-R 601-2 luma)."""
    gray = pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., np.newaxis]


def _flat(image: Image.Image, mode: str) -> Image.Image:
    """`image` in `mode` ("L" or "RGB"), 8 bits, transparency composited on white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        image = image.point(lambda value: value / 257).convert("L")
    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        paper.alpha_composite(rgba)
        image = paper
    return image.convert(mode) if image.mode != mode else image
