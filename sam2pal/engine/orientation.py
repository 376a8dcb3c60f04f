"""The eight ways a specimen photo can be turned, and their inverses for masks.

Names: rot0, rot90, rot180, rot270 (counter-clockwise), and flip-rot0… (mirrored left-right,
then rotated). `rot4` searches the four rotations, `rot4flip` all eight.
"""

from __future__ import annotations

import numpy as np

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
