"""1-bit PNG files of masks, written from the mask's box.

PIL builds a full-size image at one byte per pixel before packing it (24 MB for a 24 MP photo,
per structure); here only the box is packed into the otherwise zero rows, and deflate (which
releases the GIL, so writer threads overlap the model) compresses them. Readers see an ordinary
1-bit greyscale PNG: PIL opens it as mode "1".

Deflate is ISA-L's (`isal`): its level 1 is 4–12× faster than zlib's level 1 on mask rows and
no larger, and its output is an ordinary zlib stream. It is not always the same stream: two runs
have written one mask's file with different bytes (the same rows, checked after inflating), so
compare mask files by their pixels, never by their bytes.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from isal import isal_zlib

from sam2pal.io.boxmask import BoxMask

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode(mask: BoxMask, level: int = 1) -> bytes:
    """The PNG file of the mask (bit depth 1, greyscale, no interlace), ISA-L deflate `level` (0–3)."""
    height, width = mask.shape
    rows = np.zeros((height, (width + 7) // 8 + 1), dtype=np.uint8)  # first byte of a row: filter 0
    first, packed = mask.packed_rows()
    rows[mask.top : mask.top + packed.shape[0], 1 + first : 1 + first + packed.shape[1]] = packed
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", isal_zlib.compress(rows, level)) + _chunk(b"IEND", b"")
