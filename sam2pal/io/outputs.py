"""What a run hands back: per-image mask PNGs and overlays, a COCO file and a report.

Every file is written atomically (temp file in the same folder, then os.replace), so an
interrupted run never leaves a half-written PNG or JSON that looks finished.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import uuid
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools.coco import COCO

from sam2pal.errors import SamPalError
from sam2pal.io.masks import decode_segmentation, encode_rle, mask_area, mask_bbox, mask_polygons

STRUCTURE_COLORS: list[tuple[int, int, int]] = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
]

_TINT_LEVEL = 115  # mask value for ~0.45 opacity when pasting a colour
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
RECORDS_DIR = ".records"
_RUN_FILE = "run.json"
PREDICTIONS_NAME = "predictions.json"
REPORT_NAME = "report.json"
ZIP_NAME = "results.zip"


def structure_color(index: int) -> tuple[int, int, int]:
    """Colour of the index-th structure; cycles when there are more structures than colours."""
    return STRUCTURE_COLORS[index % len(STRUCTURE_COLORS)]


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp path in path's folder to write to; moved over path only if the block succeeds,
    so readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and os.replace, so readers see old or new only."""
    with atomic_file(path) as temp:
        # os.open with 0o666 honours the umask, unlike tempfile's private 0o600 files.
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """JSON with indent 2, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def atomic_save_image(path: str | Path, pil_image: Image.Image, **save_kwargs: Any) -> None:
    """PIL save in the format its suffix names, written atomically."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"no image format for suffix {path.suffix!r}: {path}")
    buffer = io.BytesIO()
    pil_image.save(buffer, format=image_format, **save_kwargs)
    atomic_write_bytes(path, buffer.getvalue())


def _window_all(mask: np.ndarray, size: int) -> np.ndarray:
    """out[i] = all(mask[i:i+size]) along axis 0, by doubling windows: O(log size) passes."""
    covered, width = mask, 1
    while width * 2 <= size:
        covered = covered[:-width] & covered[width:]
        width *= 2
    rest = size - width
    return covered[: covered.shape[0] - rest] & covered[rest:] if rest else covered


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Inner border of the mask, thickness pixels wide (mask minus its square erosion)."""
    size = 2 * thickness + 1
    eroded = _window_all(_window_all(np.pad(mask, thickness), size).T, size).T
    return mask & ~eroded


def _draw_legend(canvas: Image.Image, names: list[str]) -> None:
    """Swatch + name per structure in a light box, sized to the image so it stays legible."""
    width, height = canvas.size
    font_size = max(10, min(width, height) // 30)
    font = ImageFont.load_default(size=font_size)
    pad = max(2, font_size // 3)
    swatch = font_size
    row_height = font_size + pad
    measure = ImageDraw.Draw(canvas)
    text_width = max((measure.textlength(name, font=font) for name in names), default=0)
    box_size = (pad * 3 + swatch + int(text_width) + 1, pad * 2 + row_height * len(names))

    # Composite only the box region: a full-size RGBA layer would double a 100 MP photo's memory.
    box = canvas.crop((0, 0, *box_size)).convert("RGBA")
    layer = Image.new("RGBA", box_size, (255, 255, 255, 200))
    draw = ImageDraw.Draw(layer)
    for index, name in enumerate(names):
        top = pad + index * row_height
        draw.rectangle(
            [pad, top, pad + swatch - 1, top + swatch - 1],
            fill=(*structure_color(index), 255),
            outline=(0, 0, 0, 255),
        )
        draw.text((pad * 2 + swatch, top), name, font=font, fill=(0, 0, 0, 255))
    canvas.paste(Image.alpha_composite(box, layer).convert("RGB"), (0, 0))


def overlay(image: np.ndarray, masks: list[np.ndarray], names: list[str]) -> Image.Image:
    """The photo with each structure tinted and outlined in its colour, plus a legend."""
    if len(masks) != len(names):
        raise ValueError(f"{len(masks)} masks but {len(names)} names")
    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 400))
    # Pasting a colour through an L mask blends in C; numpy fancy indexing took seconds at 24 MP.
    canvas = Image.fromarray(np.asarray(image, dtype=np.uint8))  # a copy: RGB is never shared
    for index, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask {names[index]!r} is {mask.shape}, image is {(height, width)}")
        rows = np.flatnonzero(np.any(mask, axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(np.any(mask, axis=0))
        # Work on the bounding box only: structures are usually small parts of big photos.
        crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        corner = (int(cols[0]), int(rows[0]))
        color = structure_color(index)
        tint = Image.fromarray(crop.astype(np.uint8) * _TINT_LEVEL)
        canvas.paste(color, corner, tint)
        edge = Image.fromarray(_outline(crop, thickness).astype(np.uint8) * 255)
        canvas.paste(color, corner, edge)
    if names:
        _draw_legend(canvas, names)
    return canvas


def _safe_file_names(names: list[str]) -> list[str]:
    """File-name-safe, distinct versions of the structure names (COCO keeps the real names)."""
    safe_names: list[str] = []
    for index, name in enumerate(names):
        base = _UNSAFE_FILE_CHARS.sub("_", name).strip("._") or f"structure{index + 1}"
        safe, number = base, 1
        while safe in safe_names:
            number += 1
            safe = f"{base}_{number}"
        safe_names.append(safe)
    return safe_names


@dataclass
class OutputOptions:
    """How a run writes its results; none of these change a mask."""

    polygons: bool = False  # COCO polygons instead of RLE, for tools that only read polygons
    zip: bool = False  # also bundle everything into OUT/results.zip
    overwrite: bool = False  # forget an earlier run in OUT instead of completing it


def _read_object(path: Path) -> dict | None:
    """A JSON object an earlier run wrote, or None when the file is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _read_record(path: Path) -> dict | None:
    """An image's record from an earlier run, or None (then the image is simply done again;
    records older than the file names in the report entry are treated so too)."""
    record = _read_object(path)
    keys = {"stem", "report", "width", "height", "annotations"}
    if record is None or not keys <= record.keys() or not isinstance(record["report"].get("files"), dict):
        return None
    return record


def _entry_files(entry: dict) -> list[str]:
    """The files written for one segmented image: its mask PNGs, then its overlay."""
    return [*entry["files"]["masks"].values(), entry["files"]["overlay"]]


def _review_fields(quality: list[dict] | None, orientation: str | None) -> dict:
    """Per image: the worst structure's round-trip IoU (the number to sort a review by), all
    flags, and the orientation kept by an orientation search."""
    fields: dict = {}
    if orientation is not None:
        fields["orientation"] = orientation
    if quality is not None:
        trips = [q["round_trip_iou"] for q in quality if q.get("round_trip_iou") is not None]
        fields["qc_score"] = min(trips) if trips else None
        fields["flags"] = sorted({flag for q in quality for flag in q.get("flags", [])})
    return fields


def _mask_annotation(category_id: int, mask: np.ndarray) -> dict:
    """A COCO annotation of one structure's mask (RLE; the writer turns it into polygons if asked)."""
    return {"category_id": category_id, "segmentation": encode_rle(mask), "area": mask_area(mask),
            "bbox": mask_bbox(mask), "iscrowd": 0}


def _review_order(entries: list[dict]) -> list[str]:
    """Image files a reviewer should open first: lowest quality-check score first."""
    scored = [e for e in entries if e["status"] == "ok" and e.get("qc_score") is not None]
    return [e["file"] for e in sorted(scored, key=lambda e: e["qc_score"])]


def _result_files(entries: list[dict]) -> list[str]:
    """Everything a results zip holds, in report order."""
    files = [name for e in entries if e["status"] == "ok" for name in _entry_files(e)]
    return [PREDICTIONS_NAME, REPORT_NAME, *files]


class PredictionWriter:
    """Writes a run's outputs into out_dir as images arrive; close() writes the COCO and report.

    After an image's masks and overlay, a small JSON record of it goes to OUT/.records/. A later
    run into the same folder reads the records back: images done are not predicted again, an
    interrupted run is completed, and close() writes predictions.json and report.json with
    every image of every run once. OUT/.records/run.json holds `identity` (model, templates…):
    results of another model or template set are never mixed in, the run stops instead.
    """

    def __init__(
        self,
        out_dir: str | Path,
        structures: list[str],
        info: dict,
        identity: dict | None = None,
        options: OutputOptions | None = None,
    ) -> None:
        if len(set(structures)) != len(structures):
            raise ValueError(f"structure names must be distinct: {structures}")
        self.out_dir = Path(out_dir)
        self.structures = list(structures)
        self.info = dict(info)
        self.options = options or OutputOptions()
        self._file_names = _safe_file_names(self.structures)
        self._records_dir = self.out_dir / RECORDS_DIR
        if self.options.overwrite:
            self._forget_earlier_run()
        # Through JSON, so that it compares equal to the copy read back from run.json.
        self._claim_folder(
            json.loads(json.dumps({"structures": self.structures, **(identity or {})}))
        )
        self._earlier = self._load_earlier_records()  # records hold segmented images only
        self._earlier_stems = {  # image file -> the stem its outputs were written under
            record["report"]["file"]: stem for stem, record in self._earlier.items()
        }
        self._current: list[dict] = []
        self._notes: list[dict] = []
        (self.out_dir / "masks").mkdir(parents=True, exist_ok=True)
        (self.out_dir / "overlays").mkdir(parents=True, exist_ok=True)

    def _forget_earlier_run(self) -> None:
        """Delete what an earlier run wrote (only files its records name), so nothing stale stays."""
        if self._records_dir.is_dir():
            for path in self._records_dir.glob("*.json"):
                record = _read_record(path)
                for name in _entry_files(record["report"]) if record is not None else []:
                    (self.out_dir / name).unlink(missing_ok=True)
            shutil.rmtree(self._records_dir)
        for name in (PREDICTIONS_NAME, REPORT_NAME, ZIP_NAME):
            (self.out_dir / name).unlink(missing_ok=True)

    def _claim_folder(self, identity: dict) -> None:
        run_file = self._records_dir / _RUN_FILE
        if run_file.is_file():
            earlier = _read_object(run_file) or {}
            differ = sorted(
                key
                for key in identity.keys() | earlier.keys()
                if earlier.get(key) != identity.get(key)
            )
            if differ:
                raise SamPalError(
                    f"{self.out_dir} holds results of another run (different {', '.join(differ)}); "
                    "pass --overwrite to replace them or choose another --out"
                )
        atomic_write_json(run_file, identity)

    def _load_earlier_records(self) -> dict[str, dict]:
        """Records of earlier runs whose files are all still there, by stem, sorted by file name."""
        records = []
        for path in self._records_dir.glob("*.json"):
            if path.name == _RUN_FILE:
                continue
            record = _read_record(path)
            if record is not None and all(
                (self.out_dir / name).is_file() for name in _entry_files(record["report"])
            ):
                records.append(record)
        records.sort(key=lambda record: record["report"]["file"])
        return {record["stem"]: record for record in records}

    def is_done(self, image_path: str | Path) -> bool:
        """Whether an earlier run into this folder already segmented this image."""
        return Path(image_path).name in self._earlier_stems

    def _output_stem(self, image_path: Path) -> str:
        """The stem an earlier run gave this image, else its own stem made unique: a.jpg and
        a.png in one folder must not overwrite each other's masks."""
        earlier = self._earlier_stems.get(image_path.name)
        if earlier is not None:
            return earlier
        used = self._earlier.keys() | {
            record["stem"] for record in self._current if "stem" in record
        }
        stem = image_path.stem
        if stem in used:
            stem = f"{image_path.stem}_{image_path.suffix.lstrip('.')}"
        base, number = stem, 1
        while stem in used:
            number += 1
            stem = f"{base}_{number}"
        return stem

    def add(
        self,
        image_path: Path,
        image: np.ndarray,
        masks: np.ndarray,
        scores: list[float] | None = None,
        seconds: float | None = None,
        quality: list[dict] | None = None,
        orientation: str | None = None,
    ) -> None:
        """Write this image's mask PNGs, overlay and record now; the COCO file comes at close().

        `quality` holds one quality-check dict per structure (round_trip_iou, confidence,
        area_ratio, flags); it goes into the report and onto each COCO annotation as `qc_*`
        fields, so a reviewer (or another tool) can sort by it.
        """
        image_path = Path(image_path)
        height, width = image.shape[:2]
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (len(self.structures), height, width):
            raise ValueError(
                f"masks for {image_path.name} have shape {masks.shape}, expected "
                f"{(len(self.structures), height, width)}"
            )
        if scores is not None and len(scores) != len(self.structures):
            raise ValueError(f"{len(scores)} scores for {len(self.structures)} structures")
        if quality is not None and len(quality) != len(self.structures):
            raise ValueError(f"{len(quality)} quality checks for {len(self.structures)} structures")

        stem = self._output_stem(image_path)
        files = [f"masks/{stem}__{file_name}.png" for file_name in self._file_names]
        for mask, name in zip(masks, files):
            atomic_save_image(self.out_dir / name, Image.fromarray(mask.astype(np.uint8) * 255))
        files.append(f"overlays/{stem}.jpg")
        atomic_save_image(
            self.out_dir / files[-1], overlay(image, list(masks), self.structures), quality=90
        )

        per_structure: dict[str, dict] = {}
        annotations: list[dict] = []
        for index, (name, mask) in enumerate(zip(self.structures, masks)):
            score = None if scores is None else float(scores[index])
            area = mask_area(mask)
            per_structure[name] = {"area": area, "score": score}
            if quality is not None:
                per_structure[name]["qc"] = quality[index]
            if area == 0:
                continue
            annotation = _mask_annotation(index + 1, mask)
            if score is not None:
                annotation["score"] = score
            if quality is not None:
                annotation.update({f"qc_{key}": value for key, value in quality[index].items()})
            annotations.append(annotation)
        record = {
            "stem": stem,
            "report": {
                "file": image_path.name,
                "status": "ok",
                "error": None,
                "seconds": None if seconds is None else float(seconds),
                "structures": per_structure,
                **_review_fields(quality, orientation),
                # names as written (cleaned, made unique), so nobody has to rebuild them
                "files": {"masks": dict(zip(self.structures, files)), "overlay": files[-1]},
            },
            "width": width,
            "height": height,
            "annotations": annotations,
        }
        atomic_write_json(self._records_dir / f"{stem}.json", record)  # last: the image is done
        self._earlier.pop(stem, None)
        self._current.append(record)

    def add_failure(self, image_path: Path, error: str) -> None:
        """Record an image that could not be processed, so the report lists it (a later run
        into the same folder tries it again)."""
        self._current.append(
            {
                "report": {
                    "file": Path(image_path).name,
                    "status": "failed",
                    "error": str(error),
                    "seconds": None,
                    "structures": {},
                }
            }
        )

    def add_note(self, path: Path, reason: str) -> None:
        """Record a file of the image folder that was not read (not an image), and why."""
        self._notes.append(
            {
                "file": Path(path).name,
                "status": "skipped",
                "error": None,
                "reason": reason,
                "seconds": None,
                "structures": {},
            }
        )

    def _segmentation(self, annotation: dict, height: int, width: int) -> dict | list:
        if not self.options.polygons:
            return annotation["segmentation"]
        return mask_polygons(decode_segmentation(annotation["segmentation"], height, width))

    def _coco(self, records: list[dict]) -> dict:
        images: list[dict] = []
        annotations: list[dict] = []
        for record in records:
            image_id = len(images) + 1
            height, width = record["height"], record["width"]
            images.append(
                {
                    "id": image_id,
                    "file_name": record["report"]["file"],
                    "width": width,
                    "height": height,
                }
            )
            for annotation in record["annotations"]:
                segmentation = self._segmentation(annotation, height, width)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        **annotation,
                        "segmentation": segmentation,
                    }
                )
        return {
            "info": {**self.info, "date_created": datetime.now(timezone.utc).isoformat()},
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": index + 1, "name": name, "supercategory": "structure"}
                for index, name in enumerate(self.structures)
            ],
        }

    def _check_predictions(self, path: Path) -> None:
        """Reload with pycocotools and decode every mask: what we hand over must open elsewhere.

        RLE must give back exactly `area` pixels; polygons at least that many (they fill holes).
        """
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
        for annotation in coco.dataset["annotations"]:
            image = coco.imgs[annotation["image_id"]]
            with warnings.catch_warnings():
                # pycocotools' decode trips numpy 2's copy=False deprecation on every call.
                warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
                mask = coco.annToMask(annotation)
            if mask.shape != (image["height"], image["width"]):
                raise RuntimeError(
                    f"{path}: annotation {annotation['id']} decodes to shape {mask.shape}, "
                    f"expected {(image['height'], image['width'])}"
                )
            pixels = int(mask.sum())
            polygons = isinstance(annotation["segmentation"], list)
            if pixels < annotation["area"] or (pixels != annotation["area"] and not polygons):
                raise RuntimeError(
                    f"{path}: annotation {annotation['id']} decodes to {pixels} "
                    f"pixels, expected {annotation['area']}"
                )

    def close(self) -> dict:
        """Write predictions.json and report.json (and the zip), verify the COCO file, return
        the report."""
        records = list(self._earlier.values()) + self._current
        done = [record for record in records if record["report"]["status"] == "ok"]
        predictions_path = self.out_dir / PREDICTIONS_NAME
        atomic_write_json(predictions_path, self._coco(done))
        self._check_predictions(predictions_path)
        n_ok = len(done)
        entries = [record["report"] for record in records]
        report = {
            "structures": self.structures,
            "segmentation": "polygons" if self.options.polygons else "rle",
            "images": entries + self._notes,
            "n_ok": n_ok,
            "n_failed": len(records) - n_ok,
            "n_skipped": len(self._notes),
            "n_from_earlier_runs": len(self._earlier),
            "review_order": _review_order(entries),
        }
        atomic_write_json(self.out_dir / REPORT_NAME, report)
        if self.options.zip:
            write_zip(self.out_dir / ZIP_NAME, self.out_dir, _result_files(entries))
        return report


def replace_mask(out_dir: str | Path, file_name: str, structure: str, mask: np.ndarray, image: np.ndarray) -> None:
    """A reviewer's correction of one structure on one image of a finished run, written
    everywhere the run wrote that mask: the PNG, the overlay, the image's record (so a resumed
    run keeps it), predictions.json, report.json and results.zip if there is one.

    The structure loses its score and quality-check numbers and is marked `corrected`: a
    person has checked it, so it no longer pulls the image up the review order. Everything is
    read and checked before the first file is written.
    """
    out_dir = Path(out_dir)
    report = _read_object(out_dir / REPORT_NAME)
    coco = _read_object(out_dir / PREDICTIONS_NAME)
    if report is None or coco is None:
        missing = REPORT_NAME if report is None else PREDICTIONS_NAME
        raise SamPalError(f"{out_dir / missing} is missing or damaged: run predict into {out_dir} again")
    entry = next((e for e in report["images"] if e["file"] == file_name and e["status"] == "ok"), None)
    image_id = next((i["id"] for i in coco["images"] if i["file_name"] == file_name), None)
    if entry is None or image_id is None:
        raise SamPalError(f"{file_name} has no segmentation in {out_dir}; pick an image the run segmented")
    structures = report["structures"]
    if structure not in structures:
        raise SamPalError(f"{structure!r} is not one of this run's structures: {', '.join(structures)}")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise SamPalError(f"the corrected mask for {file_name} is {mask.shape}, the image {image.shape[:2]}; "
                          "open the image from the gallery again")
    others = {}
    for name in structures:
        path = out_dir / entry["files"]["masks"][name]
        if name != structure:
            if not path.is_file():
                raise SamPalError(f"{path} is missing: run predict into {out_dir} again")
            others[name] = np.asarray(Image.open(path)) > 0

    category = structures.index(structure) + 1
    annotation = {**_mask_annotation(category, mask), "corrected": True}
    entry["structures"][structure] = {"area": annotation["area"], "score": None, "corrected": True}
    if "qc_score" in entry:
        checked = [s["qc"] for s in entry["structures"].values() if "qc" in s]
        entry.update(_review_fields(checked, entry.get("orientation")))
    report["review_order"] = _review_order(report["images"])
    kept = [a for a in coco["annotations"] if (a["image_id"], a["category_id"]) != (image_id, category)]
    if mask.any():
        polygons = report.get("segmentation") == "polygons"
        kept.append({"id": max((a["id"] for a in coco["annotations"]), default=0) + 1, "image_id": image_id,
                     **annotation, "segmentation": mask_polygons(mask) if polygons else annotation["segmentation"]})
    coco["annotations"] = kept
    record_path = out_dir / RECORDS_DIR / f"{Path(entry['files']['overlay']).stem}.json"
    record = _read_record(record_path)  # without one, a resumed run predicts the image again

    atomic_save_image(out_dir / entry["files"]["masks"][structure], Image.fromarray(mask.astype(np.uint8) * 255))
    masks = [mask if name == structure else others[name] for name in structures]
    atomic_save_image(out_dir / entry["files"]["overlay"], overlay(image, masks, structures), quality=90)
    if record is not None:
        record["report"] = entry
        record["annotations"] = [a for a in record["annotations"] if a["category_id"] != category]
        record["annotations"] += [annotation] if mask.any() else []
        atomic_write_json(record_path, record)
    atomic_write_json(out_dir / PREDICTIONS_NAME, coco)
    atomic_write_json(out_dir / REPORT_NAME, report)
    if (out_dir / ZIP_NAME).is_file():
        write_zip(out_dir / ZIP_NAME, out_dir, _result_files(report["images"]))


def write_zip(path: Path, folder: Path, names: list[str]) -> None:
    """Zip folder/name for each name, atomically; PNG and JPEG are stored (already compressed)."""
    with atomic_file(path) as temp, zipfile.ZipFile(temp, "w") as bundle:
        for name in names:
            compression = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
            bundle.write(folder / name, name, compress_type=compression)
