"""A supervised step: the templates' memory predicts a labelled specimen, loss against its truth.

Labels are specimens someone has segmented: corrections made in the review tab, or ground truth
from another tool. The path is propagation's own (each template conditioned on its masks, then
the specimen tracked from them, every structure remembering only the templates that annotate
it), so what is learnt is what `predict` runs. Only structures the label annotates add loss; a
structure it marks absent is trained as absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sam2pal.engine.frames import Encoder, Frame
from sam2pal.engine.losses import LossWeights, supervised_loss
from sam2pal.engine.tracking import condition_on_mask, object_gate_bypassed, track


@dataclass
class Annotated:
    """An image's features and what is known of its K structures."""

    frame: Frame  # one image
    masks: torch.Tensor  # (K, 1, S, S) in {0, 1}; empty where absent or not annotated
    annotated: list[bool]  # per structure: a mask or an "absent" mark


@dataclass
class SupervisedOutput:
    loss: torch.Tensor  # summed over the trained structures
    structures: list[int]  # which structures were trained, in order
    per_structure: torch.Tensor  # (len(structures),) mask loss of each, detached


def trainable_structures(templates: list[Annotated], label: Annotated, structures: list[int]) -> list[int]:
    """Of `structures`, those the label annotates and at least one template remembers."""
    return [k for k in structures if label.annotated[k] and any(t.annotated[k] for t in templates)]


def supervised_step(encoder: Encoder, templates: list[Annotated], label: Annotated, structures: list[int],
                    weights: LossWeights) -> SupervisedOutput:
    """Predict `structures` of the label from the templates' memory and score them (one pass:
    the caller splits many structures into passes to bound memory)."""
    sam = encoder.loaded.sam
    trained = trainable_structures(templates, label, structures)
    groups: dict[tuple[int, ...], list[int]] = {}
    for k in trained:
        groups.setdefault(tuple(i for i, t in enumerate(templates) if t.annotated[k]), []).append(k)
    total, order, per = torch.zeros((), device=label.masks.device), [], []
    with object_gate_bypassed(sam), encoder.loaded.autocast():
        for sources, rows in groups.items():
            index = torch.tensor(rows, device=label.masks.device)
            memories = [condition_on_mask(sam, encoder.flatten(templates[i].frame.expand(len(rows))),
                                          templates[i].masks.index_select(0, index)) for i in sources]
            output = track(sam, encoder.flatten(label.frame.expand(len(rows))), memories)
            loss, mask_losses = supervised_loss(output.high_res_logits, output.iou, output.object_score_logits,
                                                label.masks.index_select(0, index), weights)
            total = total + loss
            order += rows
            per.append(mask_losses)
    per_structure = torch.cat(per) if per else torch.zeros(0)
    return SupervisedOutput(total, order, per_structure)
