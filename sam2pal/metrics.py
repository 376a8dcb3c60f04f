"""Agreement between binary masks: IoU, Dice, pixel accuracy and boundary F1, and their summary.

The empty cases are defined, not left to 0/0: an empty prediction of an empty truth (a structure
correctly found absent) scores 1.0 on every metric, and an empty mask against a non-empty one
scores 0.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: prediction {pred.shape}, truth {truth.shape}")
    return pred, truth


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union; two empty masks agree perfectly (1.0)."""
    pred, truth = _pair(pred, truth)
    union = np.logical_or(pred, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, truth).sum() / union)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|); two empty masks agree perfectly (1.0)."""
    pred, truth = _pair(pred, truth)
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2 * np.logical_and(pred, truth).sum() / total)


def pixel_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Share of the image's pixels on which prediction and truth agree (background included)."""
    pred, truth = _pair(pred, truth)
    return float((pred == truth).mean()) if pred.size else 1.0


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (the image edge counts as outside)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Every pixel within `radius` (Euclidean) of a mask pixel."""
    reach = int(math.floor(radius))
    height, width = mask.shape
    grown = mask.copy()
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if (dy, dx) == (0, 0) or dy * dy + dx * dx > radius * radius:
                continue
            grown[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] |= mask[
                max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
            ]
    return grown


def boundary_f1(pred: np.ndarray, truth: np.ndarray, tol_px: float = 2.0) -> float:
    """F1 of boundary pixels matched within tol_px pixels (Euclidean), as in DAVIS.

    Precision: share of predicted boundary pixels within tol_px of the true boundary; recall:
    the converse. Empty vs empty is 1.0, empty vs non-empty 0.0. Only the bounding box of both
    masks (plus the tolerance) is looked at, so large photos cost what their structures cost.
    """
    if tol_px < 0:
        raise ValueError(f"boundary tolerance must be 0 or more pixels, got {tol_px}")
    pred, truth = _pair(pred, truth)
    pred_any, truth_any = bool(pred.any()), bool(truth.any())
    if not pred_any or not truth_any:
        return 1.0 if pred_any == truth_any else 0.0
    either = pred | truth
    rows, cols = np.flatnonzero(either.any(axis=1)), np.flatnonzero(either.any(axis=0))
    margin = int(math.floor(tol_px)) + 1
    window = (
        slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
        slice(max(cols[0] - margin, 0), cols[-1] + margin + 1),
    )
    # The window holds both masks with a margin, so its own edge touches a mask only where the
    # image edge does: boundaries on the crop are the full masks' boundaries.
    pred_edge, truth_edge = boundary(pred[window]), boundary(truth[window])
    precision = float((pred_edge & _dilate(truth_edge, tol_px)).sum() / pred_edge.sum())
    recall = float((truth_edge & _dilate(pred_edge, tol_px)).sum() / truth_edge.sum())
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Summary:
    """Mean, spread and count of one metric over images; std is the population std (ddof 0)."""

    mean: float
    std: float
    min: float
    n: int


def summarize(values: list[float]) -> Summary:
    """Summary of a metric's values; NaN for all three statistics when there are none."""
    if not values:
        return Summary(math.nan, math.nan, math.nan, 0)
    array = np.asarray(values, dtype=float)
    return Summary(float(array.mean()), float(array.std()), float(array.min()), int(array.size))
