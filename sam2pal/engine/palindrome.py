"""One palindrome step of cycle-consistent self-training, for all K structures at once.

x0 (template, masks y0) → x1 (unlabeled specimen, soft ŷ1) → memory reset → x1 with ŷ1 as the only
memory → x0 predicted back (ŷ0†) → loss(ŷ0†, y0). ŷ1 stays soft so the loss trains the phase-1
prediction through the phase-2 memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam2pal.engine.frames import Encoder, Frame, Flat
from sam2pal.engine.losses import dice_loss
from sam2pal.engine.tracking import (
    TrackOutput,
    condition_on_mask,
    condition_on_prediction,
    object_gate_bypassed,
    track,
)

CYCLE_MEMORIES = ("tracked", "mask")


@dataclass
class AugmentConfig:
    """How far x1 is moved from what it was, so that copying the template mask fails the cycle."""

    flip: float = 0.5
    shift: float = 0.15  # of the image side
    scale: tuple[float, float] = (0.85, 1.15)


def augment(frame: Frame, config: AugmentConfig, generator: torch.Generator) -> Frame:
    """The same random flip/shift/scale applied to every feature level of a cached frame.

    Working on features keeps the feature cache valid (the encoder never reruns); the positional
    encodings are left in place, so the structures move relative to the frame.
    """
    draw = torch.rand(4, generator=generator).tolist()
    sign = -1.0 if draw[0] < config.flip else 1.0
    low, high = config.scale
    scale = low + (high - low) * draw[1]
    dx, dy = ((draw[2] * 2 - 1) * config.shift * 2, (draw[3] * 2 - 1) * config.shift * 2)
    batch = frame.batch
    device = frame.levels[0].device
    theta = torch.tensor([[sign / scale, 0.0, dx], [0.0, 1.0 / scale, dy]], device=device)
    levels = []
    for level in frame.levels:
        grid = F.affine_grid(theta.expand(batch, 2, 3).to(level.dtype), list(level.shape), align_corners=False)
        levels.append(F.grid_sample(level, grid, mode="bilinear", padding_mode="border", align_corners=False))
    return Frame(levels)


def training_mode(sam: torch.nn.Module) -> None:
    """SAM2's train-mode paths (soft memories, gradients) without dropout: a cycle signal from a
    handful of images is noisy enough, and attention dropout pushes CPU attention off its fused
    kernel (a K=3 step at 512 px took twice as long with it)."""
    sam.train()
    for module in sam.modules():
        if isinstance(module, torch.nn.Dropout) or hasattr(module, "dropout_p"):
            module.eval()


@dataclass
class StepOutput:
    loss: torch.Tensor
    per_structure: torch.Tensor  # (K,) mask loss of each structure, detached
    forward: TrackOutput  # phase 1: ŷ1 on x1
    backward: TrackOutput  # phase 2: ŷ0† on x0


def cycle_loss(prediction: TrackOutput, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice + BCE per structure on the full-size logits, plus BCE pulling the object score of
    present structures to "present" (absent ones to "absent") so the inference gate stays right.

    A sum of per-structure terms: structures are independent batch rows, so the loss of a subset
    of them, backpropagated separately, adds up to exactly the same gradient."""
    logits = prediction.high_res_logits.float()
    per_structure = dice_loss(logits, target) + F.binary_cross_entropy_with_logits(
        logits, target, reduction="none"
    ).flatten(1).mean(1)
    present = (target.flatten(1).amax(1) > 0).float()[:, None]
    score_loss = F.binary_cross_entropy_with_logits(prediction.object_score_logits.float(), present, reduction="sum")
    return per_structure.sum() + score_loss, per_structure.detach()


def palindrome_step(
    encoder: Encoder, x0: Frame, y0: torch.Tensor, x1: Frame, cycle_memory: str = "tracked"
) -> StepOutput:
    """The palindrome for K structures: `x0`, `x1` one image each; `y0` is (K, 1, S, S) in {0, 1}.

    `cycle_memory` picks how ŷ1 becomes the phase-2 memory: "tracked" encodes its logits the way
    SAM2 stores a tracked frame (one sigmoid, with its object pointer); "mask" feeds its
    probabilities back as a mask prompt (two sigmoids, a pointer from the mask).
    """
    sam = encoder.loaded.sam
    count = y0.shape[0]
    template: Flat = encoder.flatten(x0.expand(count))
    specimen: Flat = encoder.flatten(x1.expand(count))
    with object_gate_bypassed(sam), encoder.loaded.autocast():
        template_memory = condition_on_mask(sam, template, y0)  # x0 with y0
        forward = track(sam, specimen, [template_memory])  # x1: soft ŷ1
        if cycle_memory == "tracked":  # reset: x1 with ŷ1 is the only memory (x1†)
            specimen_memory = condition_on_prediction(sam, specimen, forward)
        else:
            specimen_memory = condition_on_mask(sam, specimen, torch.sigmoid(forward.high_res_logits))
        backward = track(sam, template, [specimen_memory])  # x0†: the template predicted back
    loss, per_structure = cycle_loss(backward, y0)
    return StepOutput(loss, per_structure, forward, backward)
