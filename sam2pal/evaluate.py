"""`sam2pal evaluate`: how well predicted masks match ground truth, structure by structure.

Images are matched by file name without folders (Label Studio's upload hash is ignored when the
plain name does not match), structures by category name. A ground-truth image is scored on every
ground-truth structure: a structure it has no annotation of is truly absent there, and a
structure the prediction lacks is an empty prediction (IoU 0 against a present structure, 1
against an absent one). Ground-truth images without any annotation or absent mark are not
scored: an export often lists images nobody annotated.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sam2pal.errors import SamPalError
from sam2pal.io.coco import (
    CocoFile,
    CocoImage,
    base_name,
    read_coco,
    structure_masks,
    without_upload_prefix,
)
from sam2pal.io.files import atomic_write_bytes, atomic_write_json
from sam2pal.metrics import Summary, boundary_f1, dice, iou, summarize
from sam2pal.plots import distribution_plot

METRICS = ("iou", "dice", "boundary_f1")
_METRIC_TITLES = {"iou": "IoU", "dice": "Dice", "boundary_f1": "boundary F1"}


@dataclass(frozen=True)
class PairScore:
    """One structure on one image."""

    image: str
    structure: str
    iou: float
    dice: float
    boundary_f1: float
    truth_area: int
    pred_area: int
    predicted: bool  # False: the prediction file has no mask of it on this image


@dataclass
class Evaluation:
    """Every (image, structure) score, plus what the user should know about the matching."""

    gt: str
    pred: str
    boundary_tol_px: float
    structures: list[str]
    scores: list[PairScore] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, structure: str) -> dict[str, Summary]:
        """Mean, std, min and count of each metric over the images, for one structure."""
        rows = [score for score in self.scores if score.structure == structure]
        return {metric: summarize([getattr(score, metric) for score in rows]) for metric in METRICS}

    def to_json(self) -> dict:
        per_structure = {}
        for name in self.structures:
            summary = self.summary(name)
            entry: dict = {metric: summary[metric].mean for metric in METRICS}
            entry["n"] = summary["iou"].n
            for metric in METRICS:
                entry[f"{metric}_std"] = summary[metric].std
                entry[f"{metric}_min"] = summary[metric].min
            per_structure[name] = entry
        return {
            "gt": self.gt,
            "pred": self.pred,
            "boundary_tol_px": self.boundary_tol_px,
            "per_structure": per_structure,
            "per_image": [asdict(score) for score in self.scores],
            "notes": self.notes,
        }


def _by_name(coco: CocoFile) -> dict[str, CocoImage]:
    images: dict[str, CocoImage] = {}
    for image in coco.images:
        name = base_name(image.file_name)
        if name in images:
            raise SamPalError(
                f"{coco.path}: images {images[name].id} and {image.id} are both named {name}; "
                "images are matched by file name, so give each its own"
            )
        images[name] = image
    return images


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _frame(
    gt: CocoFile, truth: CocoImage, pred: CocoFile, guess: CocoImage | None
) -> tuple[int, int]:
    """(height, width) both files must agree on for this image."""
    size = (truth.height, truth.width)
    other = None if guess is None else (guess.height, guess.width)
    if None in size:
        size = other if other is not None and None not in other else size
    if None in size:
        raise SamPalError(
            f"{gt.path}: image {truth.id} ({truth.file_name}) has no width and height, and the "
            "prediction gives none either; add them to the ground truth"
        )
    if other is not None and None not in other and other != size:
        hint = " (one of them ignored the photo's EXIF rotation)" if other == size[::-1] else ""
        raise SamPalError(
            f"{truth.file_name} is {size[1]}x{size[0]} in {gt.path} but {other[1]}x{other[0]} in "
            f"{pred.path}{hint}; compare results made from the same photos"
        )
    return size


def _score_image(
    name: str,
    gt: CocoFile,
    truth: CocoImage,
    pred: CocoFile,
    guess: CocoImage | None,
    tol_px: float,
) -> list[PairScore]:
    height, width = _frame(gt, truth, pred, guess)
    truths = structure_masks(truth, height, width)
    guesses = {} if guess is None else structure_masks(guess, height, width)
    empty = np.zeros((height, width), dtype=bool)
    scores = []
    for structure in gt.structures:
        t, p = truths.get(structure, empty), guesses.get(structure, empty)
        scores.append(
            PairScore(
                image=name,
                structure=structure,
                iou=iou(p, t),
                dice=dice(p, t),
                boundary_f1=boundary_f1(p, t, tol_px),
                truth_area=int(t.sum()),
                pred_area=int(p.sum()),
                predicted=structure in guesses,
            )
        )
    return scores


def evaluate(gt_path: str | Path, pred_path: str | Path, tol_px: float = 2.0) -> Evaluation:
    """Score every ground-truth structure on every annotated ground-truth image."""
    if not tol_px >= 0:
        raise SamPalError(f"--boundary-tol {tol_px} must be 0 or more pixels")
    gt = read_coco(gt_path, "ground-truth file")
    pred = read_coco(pred_path, "prediction file")
    result = Evaluation(str(gt.path), str(pred.path), tol_px, list(gt.structures))
    result.notes += gt.warnings + pred.warnings
    predictions = _by_name(pred)
    unprefixed = {without_upload_prefix(name): image for name, image in predictions.items()}
    scored = [
        (name, image) for name, image in _by_name(gt).items() if image.annotations or image.absent
    ]
    if not scored:
        raise SamPalError(f"{gt.path}: no image has an annotation; nothing to evaluate against")
    if len(scored) < len(gt.images):
        result.notes.append(
            f"{len(gt.images) - len(scored)} ground-truth images have no annotation and were not scored"
        )
    extra = [name for name in pred.structures if name not in gt.structures]
    if extra:
        result.notes.append(f"structures only in the prediction, not scored: {', '.join(extra)}")
    lacking = [name for name in gt.structures if name not in pred.structures]
    if lacking:
        result.notes.append(
            f"structures the prediction does not have, scored as empty: {', '.join(lacking)}"
        )
    pairs = [
        (name, truth, predictions.get(name) or unprefixed.get(without_upload_prefix(name)))
        for name, truth in scored
    ]
    unmatched = [name for name, _, guess in pairs if guess is None]
    if len(unmatched) == len(pairs):
        raise SamPalError(
            f"no image of {gt.path} is in {pred.path} (matched by file name, e.g. "
            f"{unmatched[0]}); compare files that describe the same photos"
        )
    if unmatched:
        result.notes.append(
            f"{len(unmatched)} ground-truth images have no prediction ({_listed(unmatched)}); "
            "scored as empty predictions"
        )
    for name, truth, guess in pairs:
        result.scores += _score_image(name, gt, truth, pred, guess, tol_px)
    used = {base_name(guess.file_name) for _, _, guess in pairs if guess is not None}
    not_in_truth = sorted(set(predictions) - used)
    if not_in_truth:
        result.notes.append(
            f"{len(not_in_truth)} predicted images are not in the ground truth ({_listed(not_in_truth)}); "
            "not scored"
        )
    return result


def summary_lines(evaluation: Evaluation) -> list[str]:
    """The per-structure table a person reads: mean ± std (min) of each metric."""
    images = len({score.image for score in evaluation.scores})
    width = max([len("structure")] + [len(name) for name in evaluation.structures])
    header = "  ".join(f"{_METRIC_TITLES[metric] + ' mean±std (min)':<27}" for metric in METRICS)
    lines = [
        f"{images} images matched by file name; boundary F1 within {evaluation.boundary_tol_px:g} px",
        f"{'structure':<{width}}  {'n':>4}  {header}".rstrip(),
    ]
    for name in evaluation.structures:
        summary = evaluation.summary(name)
        cells = "  ".join(
            f"{f'{s.mean:.3f}±{s.std:.3f} ({s.min:.3f})':<27}" for s in summary.values()
        )
        lines.append(f"{name:<{width}}  {summary['iou'].n:>4}  {cells}".rstrip())
    return lines


def _csv(evaluation: Evaluation) -> bytes:
    buffer = io.StringIO()
    columns = ["image", "structure", *METRICS, "truth_area", "pred_area", "predicted"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for score in evaluation.scores:
        writer.writerow(asdict(score))
    return buffer.getvalue().encode("utf-8")


def write_evaluation(evaluation: Evaluation, out_dir: str | Path) -> list[Path]:
    """metrics.csv (image × structure), metrics.json and, with matplotlib, metrics.png (one box
    plot per metric) in out_dir, atomically; the paths written."""
    out_dir = Path(out_dir)
    paths = [out_dir / "metrics.csv", out_dir / "metrics.json"]
    atomic_write_bytes(paths[0], _csv(evaluation))
    atomic_write_json(paths[1], evaluation.to_json())
    titles = {m: _METRIC_TITLES[m] + (f" (within {evaluation.boundary_tol_px:g} px)" if m == "boundary_f1" else "")
              for m in METRICS}
    values = {m: {name: [getattr(s, m) for s in evaluation.scores if s.structure == name]
                  for name in evaluation.structures} for m in METRICS}
    png = distribution_plot(evaluation.structures, values, titles)
    if png is not None:
        atomic_write_bytes(out_dir / "metrics.png", png)
        paths.append(out_dir / "metrics.png")
    return paths
