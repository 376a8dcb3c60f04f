"""Process memory: let freed activation buffers leave the resident set at once (glibc only).

glibc keeps freed blocks of a few MB in its heap for reuse; over a palindrome step at 1024 px the
holes add ~1.7 GB to peak RSS (3.9 vs 2.2 GB measured on CPU). Serving every allocation above
1 MB with its own mmap returns it on free, at the price of page faults (steps 15–30% slower), so it
is an opt-in (`--low-memory`) for machines where RAM, not time, is short.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager
from typing import Iterator

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
_OWN_MMAP_FROM = 1 << 20
_HEAP_UP_TO = 32 << 20  # the largest threshold glibc's own adjustment reaches on 64-bit systems


def _set_mmap_threshold(threshold_bytes: int) -> bool:
    """Allocations above `threshold_bytes` get their own mmap from now on; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):  # musl and other libcs
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes))


@contextmanager
def freed_memory_returned(enabled: bool) -> Iterator[bool]:
    """Allocations above 1 MB return to the system on free for a block (training); afterwards the
    heap serves blocks up to 32 MB again, so prediction in the same process runs at full speed.
    Yields whether it applied."""
    applied = enabled and _set_mmap_threshold(_OWN_MMAP_FROM)
    try:
        yield applied
    finally:
        if applied:
            _set_mmap_threshold(_HEAP_UP_TO)
