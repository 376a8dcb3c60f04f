"""Mask losses shared by palindrome, supervised and pretraining steps: all per object row.

Rows are independent objects, so every loss here is a sum of per-row terms and a subset of rows
backpropagated on its own adds up to the same gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from sam2pal.errors import SamPalError


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row soft Dice loss, (N,)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    intersection = (prob * target).sum(1)
    return 1 - (2 * intersection + 1) / (prob.sum(1) + target.sum(1) + 1)


def hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row IoU of the thresholded mask, (N,), no gradient; empty vs empty is 1."""
    pred = (logits.detach() > 0).flatten(1)
    truth = target.flatten(1) > 0.5
    inter = (pred & truth).sum(1).float()
    union = (pred | truth).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@dataclass
class LossWeights:
    """Dice, BCE and focal terms on the masks, MSE on the IoU head, BCE on the object score.

    The defaults (BCE + Dice) pretrain from random weights, where focal loss kept every early
    mask empty, and fine-tune: on the synthetic model Meta's recipe (focal 20 + Dice, no BCE)
    lowered held-out IoU where BCE + Dice raised it (`focal=20,bce=0` asks for it).
    """

    dice: float = 1.0
    bce: float = 1.0
    focal: float = 0.0
    iou: float = 1.0
    score: float = 1.0

    def __post_init__(self) -> None:
        for name in ("dice", "bce", "focal", "iou", "score"):
            if not getattr(self, name) >= 0:
                raise SamPalError(f"loss weight {name}={getattr(self, name)} must be zero or more")

    @classmethod
    def parse(cls, text: str, defaults: "LossWeights | None" = None) -> "LossWeights":
        """`dice=1,focal=20`: the named weights changed, the others as in `defaults`."""
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            if name.strip() not in cls.__dataclass_fields__:
                raise SamPalError(f"--loss-weights {text!r}: unknown term {name.strip()!r}; "
                                  f"use {', '.join(cls.__dataclass_fields__)}, e.g. dice=1,focal=20")
            try:
                values[name.strip()] = float(value)
            except ValueError:
                raise SamPalError(f"--loss-weights {text!r}: {item!r} needs a number, e.g. focal=20") from None
        return replace(defaults or cls(), **values)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """Per-row Dice + BCE + focal (torchvision's sigmoid focal loss, α 0.25, γ 2), as weighted, (N,)."""
    loss = weights.dice * dice_loss(logits, target)
    if weights.bce:
        loss = loss + weights.bce * F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    if weights.focal:
        loss = loss + weights.focal * sigmoid_focal_loss(logits, target, reduction="none").flatten(1).mean(1)
    return loss


def supervised_loss(logits: torch.Tensor, iou_pred: torch.Tensor, score_logits: torch.Tensor, target: torch.Tensor,
                    weights: LossWeights = LossWeights()) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of predictions against ground truth, summed over rows, and each row's mask loss.

    `logits` (N, 1, S, S), `iou_pred` (N,), `score_logits` (N, 1), `target` (N, 1, S, S) in {0, 1}.
    A row whose target is empty is an absent structure: its mask is pushed to empty and its
    object score to "absent"; the IoU head is trained on present rows only.
    """
    logits = logits.float()
    mask = mask_loss(logits, target, weights)
    present = (target.flatten(1).amax(1) > 0).float()
    iou_term = (iou_pred.float() - hard_iou(logits, target)) ** 2 * present
    score = F.binary_cross_entropy_with_logits(score_logits.float()[:, 0], present, reduction="none")
    total = (mask + weights.iou * iou_term + weights.score * score).sum()
    return total, mask.detach()
