"""Quality check by an honest round trip, so a person reviews the worst specimens first.

The specimen with its predicted mask becomes the only memory (fresh memory, no template) and
predicts each template back; the IoU with the template's ground truth is the QC score. A wrong
mask on the specimen rarely leads back to the right structure on the template. Mask confidence
and the area ratio to the template complete the picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sam2pal.engine.frames import Encoder, Frame
from sam2pal.engine.tracking import TrackOutput, condition_on_mask, track


@dataclass
class QCConfig:
    """Thresholds below which (or outside which) a structure is flagged for review."""

    min_round_trip_iou: float = 0.5
    min_confidence: float = 0.5
    area_ratio_range: tuple[float, float] = (0.33, 3.0)


@dataclass
class StructureQC:
    round_trip_iou: float | None  # None where no template annotates the structure
    confidence: float  # mean probability inside the predicted mask, 0 when empty
    area_ratio: float | None  # predicted area fraction / template area fraction
    flags: list[str] = field(default_factory=list)


@dataclass
class TemplateTruth:
    """A template's features and its masks at the decoder's resolution, kept for every QC."""

    frame: Frame
    masks: torch.Tensor  # bool (K, S/4, S/4)
    annotated: torch.Tensor  # bool (K,)


def _iou(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Row-wise IoU of bool (N, h, w) tensors; empty vs empty counts as 1."""
    inter = (pred & truth).flatten(1).sum(1).float()
    union = (pred | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@torch.no_grad()
def round_trip_iou(
    encoder: Encoder, specimens: Frame, output: TrackOutput, truths: list[TemplateTruth], count: int
) -> torch.Tensor:
    """(B·K,) mean IoU of the templates predicted back from each specimen's own mask (NaN where
    no template annotates the structure)."""
    sam = encoder.loaded.sam
    rows = specimens.batch * count
    flat = encoder.flatten(specimens.repeat_each(count))
    with encoder.loaded.autocast():
        memory = condition_on_mask(sam, flat, (output.high_res_logits > 0).float())
        scores = []
        for truth in truths:
            back = track(sam, encoder.flatten(truth.frame.expand(rows)), [memory])
            iou = _iou(back.low_res_logits[:, 0] > 0, truth.masks.repeat(specimens.batch, 1, 1))
            annotated = truth.annotated.repeat(specimens.batch)
            scores.append(torch.where(annotated, iou, torch.full_like(iou, float("nan"))))
    return torch.nanmean(torch.stack(scores), dim=0)


def assess(
    output: TrackOutput, round_trip: torch.Tensor | None, truths: list[TemplateTruth], count: int, config: QCConfig
) -> list[list[StructureQC]]:
    """Per specimen, per structure: the numbers and the flags."""
    probs = torch.sigmoid(output.low_res_logits.float()[:, 0])
    inside = probs > 0.5
    pixels = inside.flatten(1).sum(1)
    confidence = (probs * inside).flatten(1).sum(1) / pixels.clamp(min=1)  # 0 when empty
    area = inside.flatten(1).float().mean(1)
    annotated = torch.stack([t.annotated for t in truths]).float()
    fractions = torch.stack([t.masks.flatten(1).float().mean(1) for t in truths])
    template_area = (fractions * annotated).sum(0) / annotated.sum(0).clamp(min=1)
    low, high = config.area_ratio_range
    results = []
    for b in range(output.low_res_logits.shape[0] // count):
        per_structure = []
        for k in range(count):
            row = b * count + k
            trip = None if round_trip is None or torch.isnan(round_trip[row]) else float(round_trip[row])
            ratio = float(area[row] / template_area[k]) if template_area[k] > 0 else None
            flags = []
            if not inside[row].any():
                flags.append("empty")
            if trip is not None and trip < config.min_round_trip_iou:
                flags.append("low_round_trip_iou")
            if float(confidence[row]) < config.min_confidence:
                flags.append("low_confidence")
            if ratio is not None and not low <= ratio <= high:
                flags.append("area_ratio")
            per_structure.append(StructureQC(trip, round(float(confidence[row]), 4), ratio, flags))
        results.append(per_structure)
    return results
