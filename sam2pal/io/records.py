"""One image's outputs: its mask PNGs, its overlay and its record in OUT/.records/.

Written by `PredictionWriter` on one machine and by each worker of a cluster run; the record is
what the run's COCO file and report are assembled from, and it is written last, so an image
with a record is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sam2pal.errors import SamPalError
from sam2pal.io import bilevel_png
from sam2pal.io.boxmask import BoxMask
from sam2pal.io.files import BackgroundWrites, atomic_save_image, atomic_write_bytes, atomic_write_json, safe_file_names
from sam2pal.io.overlays import overlay
from sam2pal.io.run_report import MASKS_DIR, OVERLAYS_DIR, RECORDS_DIR, review_fields


@dataclass
class OutputOptions:
    """How a run writes its results; none of these change a mask."""

    polygons: bool = False  # COCO polygons instead of RLE, for tools that only read polygons
    zip: bool = False  # also bundle everything into OUT/results.zip
    overwrite: bool = False  # forget an earlier run in OUT instead of completing it
    masks: str = "png"  # "png": a 1-bit PNG per structure; "none": the COCO file holds the masks
    overlay_size: int | None = 2048  # long side of the overlays; None: the photo's full size

    def __post_init__(self) -> None:
        if self.masks not in MASK_FORMATS:
            raise SamPalError(f"--masks {self.masks!r}: use one of {', '.join(MASK_FORMATS)}")
        if self.overlay_size is not None and self.overlay_size < 64:
            raise SamPalError(f"--overlay-size {self.overlay_size}: use at least 64 (pixels), or full")


MASK_FORMATS = ("png", "none")


def mask_png(mask: BoxMask) -> bytes:
    """The structure's 1-bit PNG: light compression, it is written for every structure of every photo."""
    return bilevel_png.encode(mask)


def _same_proportions(image: tuple[int, int], full: tuple[int, int]) -> bool:
    """Whether `image` is `full` scaled down (each side rounded), as io.images.load_photo decodes."""
    if image == full:
        return True
    scale = max(image) / max(full)
    return image[0] <= full[0] and image[1] <= full[1] and all(
        abs(side - other * scale) <= 1.5 for side, other in zip(image, full))


def mask_annotation(category_id: int, mask: BoxMask | np.ndarray) -> dict:
    """A COCO annotation of one structure's mask (RLE; the writer turns it into polygons if asked)."""
    box = mask if isinstance(mask, BoxMask) else BoxMask.from_dense(mask)
    return {"category_id": category_id, "segmentation": box.rle(), "area": box.area(),
            "bbox": box.bbox(), "iscrowd": 0}


class RecordWriter:
    """Writes images' files and records into out_dir, in the background (`BackgroundWrites`)."""

    def __init__(self, out_dir: Path, structures: list[str], options: OutputOptions) -> None:
        self.out_dir = Path(out_dir)
        self.structures = list(structures)
        self.options = options
        self._file_names = safe_file_names(self.structures)
        self._records_dir = self.out_dir / RECORDS_DIR
        self._writes = BackgroundWrites()
        if self.options.masks == "png":
            (self.out_dir / MASKS_DIR).mkdir(parents=True, exist_ok=True)
        (self.out_dir / OVERLAYS_DIR).mkdir(parents=True, exist_ok=True)

    def write(
        self,
        stem: str,
        image_path: Path,
        image: np.ndarray,
        masks: list[BoxMask] | np.ndarray | Callable[[], list[BoxMask]],
        scores: list[float] | None = None,
        seconds: float | None = None,
        quality: list[dict] | None = None,
        orientation: str | None = None,
        adapter: dict | None = None,
        review: Callable[[], np.ndarray] | None = None,
    ) -> None:
        """Queue the image's files under `stem`, and its record, written after them.

        `masks` are at the photo's full size, or a callable that makes them on the writer's
        thread (`Prediction.boxes`), so the model goes on while they are upsampled and predictions
        waiting here hold only the model's logits. `image` may be decoded smaller (same
        proportions); the overlay is made at review size from it. `quality` holds one
        quality-check dict per structure (round_trip_iou, confidence, area_ratio, flags); it goes
        into the report and onto each COCO annotation as `qc_*` fields, so a reviewer (or another
        tool) can sort by it. `adapter`: which library adapter segmented the image and the
        selector's confidence; one the selector did not trust (`name` None) flags the image
        "adapter uncertain". `review` decodes a larger copy for the overlay on the writer's thread
        (`image` is then the model's small view, and the overlay's fallback if the photo cannot be
        read again).
        """
        if scores is not None and len(scores) != len(self.structures):
            raise ValueError(f"{len(scores)} scores for {len(self.structures)} structures")
        if quality is not None and len(quality) != len(self.structures):
            raise ValueError(f"{len(quality)} quality checks for {len(self.structures)} structures")
        mask_files = ([f"{MASKS_DIR}/{stem}__{file_name}.png" for file_name in self._file_names]
                      if self.options.masks == "png" else [])
        overlay_file = f"{OVERLAYS_DIR}/{stem}.jpg"
        files = {"masks": dict(zip(self.structures, mask_files)), "overlay": overlay_file}
        given = None if callable(masks) else self._checked(image_path, image, masks)  # wrong masks fail here

        def write() -> None:
            boxes = given if given is not None else self._checked(image_path, image, masks())
            record = self._record(stem, image_path, boxes, scores, seconds, quality,
                                  review_fields(quality, orientation, adapter), files)
            for box, name in zip(boxes, mask_files):
                atomic_write_bytes(self.out_dir / name, mask_png(box))
            picture = overlay(_review_copy(review, image), boxes, self.structures, self.options.overlay_size)
            atomic_save_image(self.out_dir / overlay_file, picture, quality=90)
            atomic_write_json(self._records_dir / f"{stem}.json", record)  # last: the image is done

        self._writes.submit(write)

    def _checked(self, image_path: Path, image: np.ndarray, masks: list[BoxMask] | np.ndarray) -> list[BoxMask]:
        """One mask per structure, all at the photo's size, of which `image` is a scaled copy."""
        boxes = [mask if isinstance(mask, BoxMask) else BoxMask.from_dense(mask) for mask in masks]
        if len(boxes) != len(self.structures):
            raise ValueError(f"{len(boxes)} masks for {image_path.name}, expected {len(self.structures)}")
        height, width = boxes[0].shape
        if any(box.shape != (height, width) for box in boxes) or not _same_proportions(image.shape[:2], (height, width)):
            raise ValueError(f"masks for {image_path.name} have shapes {sorted({box.shape for box in boxes})}, "
                             f"the image {image.shape[:2]}: they must share the image's size and proportions")
        return boxes

    def _record(self, stem: str, image_path: Path, boxes: list[BoxMask], scores: list[float] | None,
                seconds: float | None, quality: list[dict] | None, review: dict, files: dict) -> dict:
        """What the run's COCO file and report are assembled from: the annotations and the report row."""
        per_structure: dict[str, dict] = {}
        annotations: list[dict] = []
        for index, (name, box) in enumerate(zip(self.structures, boxes)):
            score = None if scores is None else float(scores[index])
            area = box.area()
            per_structure[name] = {"area": area, "score": score}
            if quality is not None:
                per_structure[name]["qc"] = quality[index]
            if area == 0:
                continue
            annotation = mask_annotation(index + 1, box)
            if score is not None:
                annotation["score"] = score
            if quality is not None:
                annotation.update({f"qc_{key}": value for key, value in quality[index].items()})
            annotations.append(annotation)
        height, width = boxes[0].shape
        report = {"file": image_path.name, "status": "ok", "error": None,
                  "seconds": None if seconds is None else float(seconds), "structures": per_structure,
                  # names as written (cleaned, made unique), so nobody has to rebuild them
                  **review, "files": files}
        return {"stem": stem, "report": report, "width": width, "height": height, "annotations": annotations}

    def flush(self) -> None:
        """Every image written so far is on disk."""
        self._writes.wait()

    def close(self) -> None:
        self._writes.close()


def _review_copy(review: Callable[[], np.ndarray] | None, view: np.ndarray) -> np.ndarray:
    """The overlay's background: the review copy, or the model's view of a photo that could not
    be read a second time (changed or removed during the run), so its masks are still written."""
    if review is None:
        return view
    try:
        copy = review()
    except SamPalError:
        return view
    return copy if _same_proportions(view.shape[:2], copy.shape[:2]) else view
