"""Segmentation quality on synthetic collections the model never saw: the numbers behind
`sam2pal bench --quality` and the quality tests.

Every collection here is drawn from evaluation or fine-tuning seeds (`synthetic.domains`), which
pretraining never uses. Scores compare full-resolution predicted masks with the drawn truth.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from sam2pal.engine.orientation import orient
from sam2pal.engine.propagate import Propagator
from sam2pal.engine.qc import QCConfig
from sam2pal.io.images import list_images, load_image
from sam2pal.io.templates import TemplateSet, load_coco_templates
from sam2pal.metrics import boundary_f1, dice, iou
from sam2pal.model.build import LoadedModel
from sam2pal.synthetic.domains import CollectionFiles


@dataclass
class Scored:
    """One structure on one specimen."""

    collection: str
    structure: str
    thin: bool
    iou: float
    dice: float
    boundary_f1: float
    qc_score: float | None  # round-trip IoU, None without QC
    predicted_iou: float  # the decoder's own IoU estimate (0 when it says absent)
    seconds: float  # per specimen, model work only


def truth_masks(files: CollectionFiles) -> dict[str, dict[str, np.ndarray]]:
    """Specimen file name -> structure -> bool mask (empty where the structure is not visible)."""
    coco = json.loads(files.ground_truth.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out: dict[str, dict[str, np.ndarray]] = {}
    for image in coco["images"]:
        blank = np.zeros((image["height"], image["width"]), dtype=bool)
        out[image["file_name"]] = {name: blank for name in files.structures}
    by_id = {image["id"]: image["file_name"] for image in coco["images"]}
    for ann in coco["annotations"]:
        out[by_id[ann["image_id"]]][names[ann["category_id"]]] = mask_utils.decode(ann["segmentation"]).astype(bool)
    return out


def first_templates(template_set: TemplateSet, count: int) -> TemplateSet:
    return TemplateSet(template_set.structures, template_set.templates[:count], template_set.warnings)


def score_collection(loaded: LoadedModel, files: CollectionFiles, templates: int = 1, turn: str = "rot0",
                     orientation: str = "none", qc: bool = True, batch_size: int = 4) -> list[Scored]:
    """Propagate from the first `templates` templates to every specimen, turned by `turn`
    (rot90, rot180…) before the model sees it; score against the truth turned alike."""
    template_set = first_templates(load_coco_templates(files.templates), templates)
    propagator = Propagator(loaded, template_set, qc=QCConfig() if qc else None, orientation=orientation)
    truth = truth_masks(files)
    paths = list_images(files.specimens)
    scored: list[Scored] = []
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        images = [orient(load_image(p), turn) for p in batch]
        began = time.perf_counter()
        predictions = propagator.predict(images)
        seconds = (time.perf_counter() - began) / len(batch)
        for path, prediction in zip(batch, predictions):
            masks = prediction.masks()
            for k, name in enumerate(template_set.structures):
                true = orient(truth[path.name][name], turn)
                pred = masks[k]
                trip = prediction.qc[k].round_trip_iou if prediction.qc is not None else None
                scored.append(Scored(files.folder.name, name, name in files.thin, iou(pred, true), dice(pred, true),
                                     boundary_f1(pred, true), trip, prediction.scores[k], seconds))
    return scored


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation, ties given their average rank."""
    def ranks(values: list[float]) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        order = np.argsort(values, kind="mergesort")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values))
        for value in np.unique(values):
            tied = values == value
            ranked[tied] = ranked[tied].mean()
        return ranked

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def worst_overlap(qc_scores: list[float], true_iou: list[float], share: float = 0.1) -> tuple[int, int]:
    """How many of the worst `share` by QC score are among the truly worst `share`, of how many."""
    count = max(1, int(round(share * len(true_iou))))
    by_qc = set(np.argsort(qc_scores, kind="mergesort")[:count].tolist())
    by_truth = set(np.argsort(true_iou, kind="mergesort")[:count].tolist())
    return len(by_qc & by_truth), count


@dataclass
class Line:
    label: str
    n: int
    iou: float
    dice: float
    boundary_f1: float
    seconds: float


def summarise(label: str, scored: list[Scored]) -> Line:
    if not scored:
        return Line(label, 0, float("nan"), float("nan"), float("nan"), float("nan"))
    return Line(label, len(scored), float(np.mean([s.iou for s in scored])), float(np.mean([s.dice for s in scored])),
                float(np.mean([s.boundary_f1 for s in scored])), float(np.mean([s.seconds for s in scored])))

