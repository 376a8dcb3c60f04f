"""A reviewer's correction of one structure on one image of a finished run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sam2pal.errors import SamPalError
from sam2pal.io.files import atomic_save_image, atomic_write_json, read_json_object, write_zip
from sam2pal.io.masks import mask_polygons
from sam2pal.io.outputs import mask_annotation, read_record
from sam2pal.io.overlays import overlay
from sam2pal.io.run_report import RECORDS_DIR, RunReport


def replace_mask(out_dir: str | Path, file_name: str, structure: str, mask: np.ndarray, image: np.ndarray) -> None:
    """Write the correction everywhere the run wrote that mask: the PNG, the overlay, the image's
    record (so a resumed run keeps it), predictions.json, report.json and results.zip if there is one.

    The structure loses its score and quality-check numbers and is marked `corrected`: a
    person has checked it, so it no longer pulls the image up the review order. Everything is
    read and checked before the first file is written.
    """
    report = RunReport.read(out_dir)
    coco = read_json_object(report.predictions)
    if coco is None:
        raise SamPalError(f"{report.predictions} is missing or damaged: run predict into {report.folder} again")
    entry = report.entry(file_name)
    image_id = next((i["id"] for i in coco["images"] if i["file_name"] == file_name), None)
    if image_id is None:
        raise SamPalError(f"{file_name} has no segmentation in {report.folder}; pick an image the run segmented")
    structures = report.structures
    if structure not in structures:
        raise SamPalError(f"{structure!r} is not one of this run's structures: {', '.join(structures)}")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise SamPalError(f"the corrected mask for {file_name} is {mask.shape}, the image {image.shape[:2]}; "
                          "open the image from the gallery again")
    files = report.mask_files(file_name)
    others = {}
    for name in structures:
        if name != structure:
            if not files[name].is_file():
                raise SamPalError(f"{files[name]} is missing: run predict into {report.folder} again")
            others[name] = np.asarray(Image.open(files[name])) > 0

    category = structures.index(structure) + 1
    annotation = {**mask_annotation(category, mask), "corrected": True}
    entry = report.mark_corrected(file_name, structure, annotation["area"])
    kept = [a for a in coco["annotations"] if (a["image_id"], a["category_id"]) != (image_id, category)]
    if mask.any():
        kept.append({"id": max((a["id"] for a in coco["annotations"]), default=0) + 1, "image_id": image_id,
                     **annotation, "segmentation": mask_polygons(mask) if report.polygons else annotation["segmentation"]})
    coco["annotations"] = kept
    record_path = report.folder / RECORDS_DIR / f"{report.overlay_file(entry).stem}.json"
    record = read_record(record_path)  # without one, a resumed run predicts the image again

    atomic_save_image(files[structure], Image.fromarray(mask.astype(np.uint8) * 255))
    masks = [mask if name == structure else others[name] for name in structures]
    atomic_save_image(report.overlay_file(entry), overlay(image, masks, structures), quality=90)
    if record is not None:
        record["report"] = entry
        record["annotations"] = [a for a in record["annotations"] if a["category_id"] != category]
        record["annotations"] += [annotation] if mask.any() else []
        atomic_write_json(record_path, record)
    atomic_write_json(report.predictions, coco)
    report.write()
    if report.zip.is_file():
        write_zip(report.zip, report.folder, report.result_files())
