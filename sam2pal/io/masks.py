"""COCO segmentation <-> boolean mask, exact, on top of pycocotools.

Run lengths from users' COCO files are parsed and checked here: pycocotools' C decoder trusts
them blindly, and counts that do not add up to H*W decode to uninitialised memory.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE with str counts, ready for json.dump."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    height, width = (int(side) for side in rle["size"])
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _compressed_counts(counts: str) -> list[int]:
    """Run lengths from COCO's compressed string (6-bit groups, sign bit, delta to run i-2)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("RLE counts string ends in the middle of a number")
            group = ord(counts[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"RLE counts contain an invalid character {counts[position]!r}")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _check_runs(runs: list[int], height: int, width: int) -> None:
    if any(run < 0 for run in runs):
        raise ValueError("RLE counts contain a negative run length")
    if sum(runs) != height * width:
        raise ValueError(
            f"RLE counts cover {sum(runs)} pixels but the mask has {height}x{width}="
            f"{height * width}"
        )


def _runs_from_rle(segmentation: dict, height: int, width: int) -> list[int]:
    if "counts" not in segmentation or "size" not in segmentation:
        raise ValueError("RLE needs 'counts' and 'size'")
    size = segmentation["size"]
    if not (isinstance(size, list | tuple) and len(size) == 2) or not all(
        isinstance(side, int) for side in size
    ):
        raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
    if list(size) != [height, width]:
        raise ValueError(f"RLE size {list(size)} differs from the image size [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(isinstance(run, int) and not isinstance(run, bool) for run in counts):
            raise ValueError("uncompressed RLE counts must be integers")
        return counts
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError as error:
            raise ValueError("RLE counts are not ASCII") from error
    if not isinstance(counts, str):
        raise ValueError(
            f"RLE counts must be a string or a list of integers, got {type(counts).__name__}"
        )
    return _compressed_counts(counts)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool: what a COCO coordinate or count may be."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _runs_from_polygons(segmentation: list, height: int, width: int) -> list[int]:
    polygons = [segmentation] if all(is_number(v) for v in segmentation) else segmentation
    for polygon in polygons:
        if not isinstance(polygon, list) or not all(is_number(v) for v in polygon):
            raise ValueError("polygon must be a list of [x1, y1, x2, y2, ...] number lists")
        if len(polygon) % 2 or len(polygon) < 6:
            raise ValueError(
                f"polygon needs an even number of coordinates and at least 3 points, got "
                f"{len(polygon)} numbers"
            )
    polygons = [[float(v) for v in polygon] for polygon in polygons]
    rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    return _compressed_counts(rle["counts"].decode("ascii"))


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Bool H×W from a COCO polygon list, compressed RLE or uncompressed RLE.

    Runs are expanded with numpy rather than pycocotools.decode, whose numpy-2 array protocol
    warns on every call; polygons are still rasterised by pycocotools. Raises ValueError with
    a short reason; callers add the file and annotation.
    """
    if isinstance(segmentation, dict):
        runs = _runs_from_rle(segmentation, height, width)
    elif isinstance(segmentation, list) and segmentation:
        runs = _runs_from_polygons(segmentation, height, width)
    else:
        raise ValueError("segmentation must be a non-empty polygon list or an RLE dict")
    _check_runs(runs, height, width)
    # COCO runs alternate background/foreground, starting with background, down the columns.
    foreground = np.arange(len(runs)) % 2 == 1
    return np.ascontiguousarray(np.repeat(foreground, runs).reshape(width, height).T)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO [x, y, w, h] of the nonzero pixels, [0, 0, 0, 0] when there are none."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(np.any(mask, axis=0))
    x, y = int(cols[0]), int(rows[0])
    return [float(x), float(y), float(cols[-1] - x + 1), float(rows[-1] - y + 1)]


def mask_area(mask: np.ndarray) -> int:
    """Pixel count, as COCO's 'area' for a mask."""
    return int(np.count_nonzero(mask))


# Boundary edges run along pixel sides with the mask on their right (image axes, y down), so
# outer outlines turn clockwise on screen and holes counter-clockwise. Directions in clockwise
# order, so that (d + 1) % 4 is a right turn.
_STEPS = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)])  # east, south, west, north as (dx, dy)


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start corner x, y and direction of every pixel side between mask and background."""
    padded = np.pad(mask, 1)
    inside = padded[1:-1, 1:-1]
    xs, ys, directions = [], [], []
    # (neighbour that must be outside, direction, corner offset of the edge start)
    for neighbour, direction, (dx, dy) in (
        (padded[:-2, 1:-1], 0, (0, 0)),  # top side, walked east
        (padded[1:-1, 2:], 1, (1, 0)),  # right side, walked south
        (padded[2:, 1:-1], 2, (1, 1)),  # bottom side, walked west
        (padded[1:-1, :-2], 3, (0, 1)),  # left side, walked north
    ):
        rows, cols = np.nonzero(inside & ~neighbour)
        xs.append(cols + dx)
        ys.append(rows + dy)
        directions.append(np.full(rows.size, direction))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(directions)


def _successors(x: np.ndarray, y: np.ndarray, direction: np.ndarray, width: int) -> np.ndarray:
    """Index of the edge that follows each edge along its outline.

    Where two outlines touch at a corner (diagonal pixels) the right turn is taken, so pixels
    that only touch diagonally get separate outlines (4-connected parts).
    """
    stride = width + 1
    keys = (y * stride + x) * 4 + direction
    order = np.argsort(keys)
    sorted_keys = keys[order]
    end = (y + _STEPS[direction, 1]) * stride + (x + _STEPS[direction, 0])
    successor = np.full(keys.size, -1)
    for turn in (1, 0, 3):  # right, straight on, left
        wanted = end * 4 + (direction + turn) % 4
        at = np.minimum(np.searchsorted(sorted_keys, wanted), keys.size - 1)
        found = (sorted_keys[at] == wanted) & (successor < 0)
        successor[found] = order[at[found]]
    return successor


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons ([x1, y1, x2, y2, ...]) of the outer outline of every 4-connected part.

    Vertices lie on pixel corners, so pycocotools rasterises each polygon back to exactly the
    pixels of its part. COCO polygons cannot have holes: a hole is filled, and a part lying
    inside a hole gets its own polygon.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    x, y, direction = _boundary_edges(mask)
    successor = _successors(x, y, direction, mask.shape[1]).tolist()
    x_list, y_list, direction_list = x.tolist(), y.tolist(), direction.tolist()
    visited = [False] * len(successor)
    polygons: list[list[float]] = []
    for first in range(len(successor)):
        if visited[first]:
            continue
        corners: list[float] = []
        edge = first
        while not visited[edge]:
            visited[edge] = True
            following = successor[edge]
            if direction_list[following] != direction_list[edge]:
                corners += [x_list[following], y_list[following]]
            edge = following
        if _signed_area(corners) > 0:  # clockwise on screen: an outer outline, not a hole
            polygons.append([float(value) for value in corners])
    return polygons


def _signed_area(flat: list[float]) -> float:
    xs, ys = np.asarray(flat[0::2]), np.asarray(flat[1::2])
    return float(np.dot(xs, np.roll(ys, -1)) - np.dot(np.roll(xs, -1), ys)) / 2
