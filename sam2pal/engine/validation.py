"""What a fine-tune is judged on, and `validation.json`, the one record of that judgement.

Held-out images are never a loss target in the run they judge: without labels, about one in
five templates (at least one) is held out and predicted from the other templates' memory; with
two or more labelled specimens, about one in five of those is the test part, predicted from every
template's memory, and the templates all train.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sam2pal.engine.frames import Encoder, FeatureCache, Frame
from sam2pal.engine.propagate import full_resolution, segment_groups, template_memories
from sam2pal.engine.train_config import TrainConfig, split_templates
from sam2pal.io.files import atomic_write_json
from sam2pal.io.templates import TemplateSet
from sam2pal.metrics import boundary_f1, dice, iou, pixel_accuracy

VALIDATION_NAME = "validation.json"
METRICS = {"iou": iou, "dice": dice, "pixel_accuracy": pixel_accuracy, "boundary_f1": boundary_f1}


@dataclass
class Split:
    """Indices of the templates and labelled specimens that train, and of those held out."""

    train_templates: list[int]
    held_out: list[int]  # templates
    train_labels: list[int]
    test_labels: list[int]

    @classmethod
    def choose(cls, templates: int, labels: list[str], config: TrainConfig, trained_before: set[str]) -> "Split":
        """Labels are split when there are two or more (every template is memory then); else the
        templates are, and a single label trains. `trained_before`: labels the adapter a run
        starts from was trained on, never held out."""
        train, test = split_labels(labels, config.folds, config.fold, config.seed, trained_before)
        if test:
            return cls(list(range(templates)), [], train, test)
        kept, held = split_templates(templates, config.folds, config.fold, config.seed)
        return cls(kept, held, list(range(len(labels))), [])

    @property
    def validated(self) -> bool:
        return bool(self.held_out or self.test_labels)


def split_labels(names: list[str], folds: int, fold: int, seed: int, trained_before: set[str]) -> tuple[list[int], list[int]]:
    """(training, test) label indices. A label's fold comes from a seeded hash of its file name,
    so it keeps its part when a later round adds labels, and a label an earlier round trained on
    is never tested; at least one is tested when two or more could be."""
    candidates = [i for i, name in enumerate(names) if name not in trained_before]
    if len(names) < 2 or not candidates:
        return list(range(len(names))), []
    folds = min(folds, len(names))

    def key(index: int) -> int:
        return int(hashlib.sha256(f"{seed}:{names[index]}".encode()).hexdigest(), 16)

    test = [i for i in candidates if key(i) % folds == fold % folds] or [min(candidates, key=key)]
    return [i for i in range(len(names)) if i not in test], test


@torch.no_grad()
def score_held_out(encoder: Encoder, templates: TemplateSet, memory: list[int],
                   held: list[tuple[TemplateSet, int, Frame]], cache: FeatureCache | None) -> dict[str, dict[str, float]]:
    """Metric -> structure -> mean over the `held` images (group, index, features), each
    predicted from the memory of templates `memory`. A structure marked absent on a held-out
    image is scored against an empty mask; one not annotated there is not scored on it."""
    encoder.loaded.sam.eval()
    structures = templates.structures
    scores: dict[str, dict[str, list[float]]] = {m: {name: [] for name in structures} for m in METRICS}
    memories = template_memories(encoder, templates, memory, cache)
    position = {index: i for i, index in enumerate(memory)}
    groups = [(rows, [position[t] for t in sources]) for rows, sources in templates.memory_groups(memory)]
    for group, index, frame in held:
        output = segment_groups(encoder, frame, memories, groups, len(structures))
        height, width = group.templates[index].image.shape[:2]
        predicted = full_resolution(output.low_res_logits, height, width)
        truth = group.mask_stack(index)
        for k, (name, annotated) in enumerate(zip(structures, group.annotated(index))):
            if annotated:
                for metric, score in METRICS.items():
                    scores[metric][name].append(score(predicted[k], truth[k]))
    return {metric: {name: float(np.mean(values)) for name, values in per.items() if values}
            for metric, per in scores.items()}


def write_validation(out_dir: Path, model: str, templates: TemplateSet, labels: TemplateSet | None, split: Split,
                     config: TrainConfig, best_epoch: int, history: list[dict], started_from: str | Path | None) -> None:
    """validation.json: what was held out and trained on, and every epoch's scores (epoch 0 is
    the model trained from: the base model, or the --init-adapter, with the base model's score
    beside it)."""
    names = [t.name for t in templates.templates]
    atomic_write_json(out_dir / VALIDATION_NAME, {
        "model": model,
        "validated": split.validated,
        "note": None if split.validated else "one template and at most one label: nothing to validate on, "
                                             "the last epoch is kept",
        "held_out": [names[i] for i in split.held_out],
        "trained_on": [names[i] for i in split.train_templates],
        "labels": None if labels is None else {
            "held_out": [labels.templates[i].name for i in split.test_labels],
            "trained_on": [labels.templates[i].name for i in split.train_labels],
            "supervised_only": config.supervised_only},
        "split": {"folds": config.folds, "fold": config.fold, "seed": config.seed},
        "init_adapter": None if started_from is None else str(started_from),
        "best_epoch": best_epoch,
        "zero_shot_mean_iou": history[0].get("base_mean_iou", history[0]["mean_iou"]) if started_from else history[0]["mean_iou"],
        "init_adapter_mean_iou": history[0]["mean_iou"] if started_from else None,
        "epochs": history,
    })
