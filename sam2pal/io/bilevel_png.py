"""1-bit PNG files of masks, written from the mask's box.

PIL builds a full-size image at one byte per pixel before packing it (24 MB for a 24 MP photo,
per structure); here only the box is packed into the otherwise zero rows, and zlib (which
releases the GIL, so writer threads overlap the model) compresses them. Readers see an ordinary
1-bit greyscale PNG: PIL opens it as mode "1".
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from sam2pal.io.boxmask import BoxMask

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode(mask: BoxMask, level: int = 1) -> bytes:
    """The PNG file of the mask (bit depth 1, greyscale, no interlace), zlib `level`."""
    height, width = mask.shape
    rows = np.zeros((height, (width + 7) // 8 + 1), dtype=np.uint8)  # first byte of a row: filter 0
    crop = mask.crop
    if crop.size:
        shift = mask.left % 8  # bits before the box in its first byte
        padded = np.zeros((crop.shape[0], shift + crop.shape[1]), dtype=bool)
        padded[:, shift:] = crop
        packed = np.packbits(padded, axis=1)
        first = 1 + mask.left // 8
        rows[mask.top : mask.top + crop.shape[0], first : first + packed.shape[1]] = packed
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, level)) + _chunk(b"IEND", b"")
