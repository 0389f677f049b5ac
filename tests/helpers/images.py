"""Images built by hand, byte by byte, where Pillow cannot make them: a decompression bomb's
header, and 16-bit RGBA PNGs that decode to far more than their file size."""

from __future__ import annotations

import struct
import zlib


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge canvas in a few bytes: a decompression bomb's header."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def rgba_png(side: int = 4096, *, bits: int = 16, ink: bool = False) -> bytes:
    """A white RGBA PNG built by hand (Pillow cannot write 16-bit RGBA), with a black bar
    down its middle for `ink`. Deflated, 4096x4096 at 16 bits (128 MiB decoded) is a file of
    about 137 KB; at 8 bits (64 MiB, the default limit) about 75 KB."""
    pixel = 4 * bits // 8
    white = b"\0" + b"\xff" * (side * pixel)  # each row: filter byte "none", then pixels
    bar = side // 16
    black = (b"\0" + b"\xff" * ((side - bar) // 2 * pixel)
             + (b"\0" * (pixel * 3 // 4) + b"\xff" * (pixel // 4)) * bar  # opaque black
             + b"\xff" * ((side - bar + 1) // 2 * pixel))
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(black if ink and side // 4 <= y < side * 3 // 4 else white)
                    for y in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, bits, 6, 0, 0, 0)  # colour type 6: RGBA
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks
