"""The eight ways a specimen photo can be turned, and their inverses for masks.

Names: rot0, rot90, rot180, rot270 (counter-clockwise), and flip-rot0… (mirrored left-right,
then rotated). `rot4` searches the four rotations, `rot4flip` all eight.
"""

from __future__ import annotations

import numpy as np

from sam2pal.io.boxmask import BoxMask

SEARCHES = {
    "none": ("rot0",),
    "rot4": ("rot0", "rot90", "rot180", "rot270"),
    "rot4flip": ("rot0", "rot90", "rot180", "rot270", "flip-rot0", "flip-rot90", "flip-rot180", "flip-rot270"),
}


def _parts(name: str) -> tuple[bool, int]:
    flip = name.startswith("flip-")
    return flip, int(name.removeprefix("flip-").removeprefix("rot")) // 90


def orient(image: np.ndarray, name: str) -> np.ndarray:
    """H×W(×C) image turned as `name` says."""
    flip, turns = _parts(name)
    if flip:
        image = image[:, ::-1]
    return np.ascontiguousarray(np.rot90(image, turns))


def restore(masks: np.ndarray, name: str) -> np.ndarray:
    """(K, h, w) masks predicted on `orient(image, name)` back in the original image's frame."""
    flip, turns = _parts(name)
    masks = np.rot90(masks, -turns, axes=(1, 2))
    if flip:
        masks = masks[:, :, ::-1]
    return np.ascontiguousarray(masks)


def turned_shape(shape: tuple[int, int], name: str) -> tuple[int, int]:
    """(height, width) of an image of `shape` after `orient(..., name)`."""
    return shape[::-1] if _parts(name)[1] % 2 else shape


def restore_box(mask: BoxMask, name: str) -> BoxMask:
    """`restore` for one mask kept as its bounding box."""
    flip, turns = _parts(name)
    mask = mask.rot90(-turns)
    return mask.fliplr() if flip else mask
