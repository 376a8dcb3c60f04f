"""A reviewer's correction of one structure on one image of a finished run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sam2pal.errors import SamPalError
from sam2pal.io.boxmask import BoxMask
from sam2pal.io.files import atomic_save_image, atomic_write_bytes, atomic_write_json, read_json_object, write_zip
from sam2pal.io.masks import decode_segmentation, mask_polygons
from sam2pal.io.outputs import read_record
from sam2pal.io.records import mask_annotation, mask_png
from sam2pal.io.overlays import overlay
from sam2pal.io.run_report import RECORDS_DIR, RunReport


def _record_path(report: RunReport, entry: dict) -> Path:
    return report.folder / RECORDS_DIR / f"{report.overlay_file(entry).stem}.json"


def stored_masks(out_dir: str | Path, file_name: str) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """Every structure's mask of one segmented image as the run holds it now (corrections
    included), from the image's record: the same run lengths as predictions.json, and there with
    --masks none too. Returns the masks and the photo's (height, width)."""
    report = RunReport.read(out_dir)
    record = read_record(_record_path(report, report.entry(file_name)))
    if record is None:
        raise SamPalError(f"the record of {file_name} in {report.folder} is missing or damaged: "
                          "run predict into that folder again")
    shape = (record["height"], record["width"])
    masks = {name: np.zeros(shape, dtype=bool) for name in report.structures}
    for annotation in record["annotations"]:
        masks[report.structures[annotation["category_id"] - 1]] = decode_segmentation(annotation["segmentation"], *shape)
    return masks, shape


def replace_mask(out_dir: str | Path, file_name: str, structure: str, mask: np.ndarray, image: np.ndarray) -> None:
    """Write the correction everywhere the run wrote that mask: the PNG (if the run writes them),
    the overlay, the image's record (so a resumed run keeps it), predictions.json, report.json and
    results.zip if there is one. `image` may be decoded at review size; `mask` is full size.

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
    others, shape = stored_masks(out_dir, file_name)
    if mask.shape != shape:
        raise SamPalError(f"the corrected mask for {file_name} is {mask.shape}, the photo {shape}; "
                          "open the image from the gallery again")
    files = report.mask_files(file_name)

    category = structures.index(structure) + 1
    annotation = {**mask_annotation(category, mask), "corrected": True}
    entry = report.mark_corrected(file_name, structure, annotation["area"])
    kept = [a for a in coco["annotations"] if (a["image_id"], a["category_id"]) != (image_id, category)]
    if mask.any():
        kept.append({"id": max((a["id"] for a in coco["annotations"]), default=0) + 1, "image_id": image_id,
                     **annotation, "segmentation": mask_polygons(mask) if report.polygons else annotation["segmentation"]})
    coco["annotations"] = kept
    record_path = _record_path(report, entry)
    record = read_record(record_path)
    overlay_size = coco.get("info", {}).get("parameters", {}).get("overlay_size")

    if structure in files:
        atomic_write_bytes(files[structure], mask_png(BoxMask.from_dense(mask)))
    masks = [mask if name == structure else others[name] for name in structures]
    atomic_save_image(report.overlay_file(entry), overlay(image, masks, structures, overlay_size), quality=90)
    if record is not None:
        record["report"] = entry
        record["annotations"] = [a for a in record["annotations"] if a["category_id"] != category]
        record["annotations"] += [annotation] if mask.any() else []
        atomic_write_json(record_path, record)
    atomic_write_json(report.predictions, coco)
    report.write()
    if report.zip.is_file():
        write_zip(report.zip, report.folder, report.result_files())


def corrections_as_labels(out_dir: str | Path, json_path: str | Path) -> list[str]:
    """Write the run's corrected structures as a COCO file of labelled specimens (`io.labels`):
    one image per specimen with a correction, annotated with the structures a person corrected
    (the others are predictions, not truth, and stay not annotated). Returns the file names."""
    report = RunReport.read(out_dir)
    images, annotations = [], []
    for entry in report.segmented():
        corrected = [name for name, s in entry["structures"].items() if s.get("corrected")]
        if not corrected:
            continue
        record = read_record(_record_path(report, entry))
        if record is None:
            raise SamPalError(f"the record of {entry['file']} in {report.folder} is missing or damaged: "
                              "run predict into that folder again")
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": entry["file"], "width": record["width"],
                       "height": record["height"]})
        ids = {report.structures.index(name) + 1 for name in corrected}
        for annotation in record["annotations"]:
            if annotation["category_id"] in ids:
                annotations.append({**{k: annotation[k] for k in ("category_id", "segmentation", "area", "bbox")},
                                    "id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0})
        absent = [name for name in corrected if report.structures.index(name) + 1 not in
                  {a["category_id"] for a in record["annotations"]}]
        if absent:  # corrected to nothing: a person says it is not there
            images[-1]["structure_status"] = {name: "absent" for name in absent}
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(report.structures)]
    atomic_write_json(Path(json_path), {"images": images, "annotations": annotations, "categories": categories})
    return [image["file_name"] for image in images]
