"""What a run hands back, assembled: the COCO file and the report from every image's record,
and an earlier run in the same folder completed rather than repeated.

Every file is written atomically (`io.files`), so an interrupted run never leaves a half-written
PNG or JSON that looks finished.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from sam2pal.errors import SamPalError
from sam2pal.io.boxmask import BoxMask
from sam2pal.io.files import atomic_file, atomic_write_json, read_json_object, write_zip
from sam2pal.io.masks import decode_segmentation, mask_polygons
from sam2pal.io.records import OutputOptions, RecordWriter
from sam2pal.io.run_report import (
    PREDICTIONS_NAME,
    RECORDS_DIR,
    REPORT_NAME,
    ZIP_NAME,
    RunReport,
    entry_files,
)

_RUN_FILE = "run.json"


def read_record(path: Path) -> dict | None:
    """An image's record from an earlier run, or None (then the image is simply done again;
    records older than the file names in the report entry are treated so too)."""
    record = read_json_object(path)
    keys = {"stem", "report", "width", "height", "annotations"}
    if record is None or not keys <= record.keys() or not isinstance(record["report"].get("files"), dict):
        return None
    return record


def check_annotation(annotation: dict, height: int, width: int, where: str) -> None:
    """pycocotools parses the segmentation (RLE string, or polygons rasterised to RLE) in C and
    counts its pixels without building the H×W array: RLE must give back exactly `area` pixels,
    polygons at least that many (they fill holes). What we hand over must open elsewhere."""
    segmentation = annotation["segmentation"]
    polygons = isinstance(segmentation, list)
    if polygons:
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    if list(rle["size"]) != [height, width]:
        raise RuntimeError(f"{where}: annotation {annotation['id']} has size {list(rle['size'])}, "
                           f"expected {[height, width]}")
    pixels = int(coco_mask.area(rle))
    if pixels < annotation["area"] or (pixels != annotation["area"] and not polygons):
        raise RuntimeError(f"{where}: annotation {annotation['id']} decodes to {pixels} "
                           f"pixels, expected {annotation['area']}")


def check_coco_file(path: Path) -> None:
    """Reload a COCO file with pycocotools and measure every mask (`check_annotation`)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    for annotation in coco.dataset["annotations"]:
        image = coco.imgs[annotation["image_id"]]
        check_annotation(annotation, image["height"], image["width"], str(path))


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
        self._records_dir = self.out_dir / RECORDS_DIR
        if self.options.overwrite:
            self._forget_earlier_run()
        # Through JSON, so that it compares equal to the copy read back from run.json.
        self._claim_folder(
            json.loads(json.dumps({"structures": self.structures, **(identity or {})}))
        )
        # Only stems and file names are held: records stay on disk and are streamed into the
        # COCO file at close(), so memory does not grow with the collection.
        self._earlier = self._load_earlier_records()  # stem -> image file, segmented images only
        self._earlier_stems = {file: stem for stem, file in self._earlier.items()}
        self._current: list[str | dict] = []  # this run, in order: a stem written, or a failure's entry
        self._current_stems: set[str] = set()
        self._notes: list[dict] = []
        self._reserved: set[str] = set()
        self._records = RecordWriter(self.out_dir, self.structures, self.options)

    def _forget_earlier_run(self) -> None:
        """Delete what an earlier run wrote (only files its records name), so nothing stale stays."""
        if self._records_dir.is_dir():
            for path in self._records_dir.glob("*.json"):
                record = read_record(path)
                for name in entry_files(record["report"]) if record is not None else []:
                    (self.out_dir / name).unlink(missing_ok=True)
            shutil.rmtree(self._records_dir)
        for name in (PREDICTIONS_NAME, REPORT_NAME, ZIP_NAME):
            (self.out_dir / name).unlink(missing_ok=True)

    def _claim_folder(self, identity: dict) -> None:
        run_file = self._records_dir / _RUN_FILE
        if run_file.is_file():
            earlier = read_json_object(run_file) or {}
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

    def _load_earlier_records(self) -> dict[str, str]:
        """Stem -> image file of earlier runs' records whose files are all still there, sorted by file name."""
        found = []
        for path in self._records_dir.glob("*.json"):
            if path.name == _RUN_FILE:
                continue
            record = read_record(path)
            if record is not None and all(
                (self.out_dir / name).is_file() for name in entry_files(record["report"])
            ):
                found.append((record["report"]["file"], record["stem"]))
        return {stem: file for file, stem in sorted(found)}

    def is_done(self, image_path: str | Path) -> bool:
        """Whether an earlier run into this folder already segmented this image."""
        return Path(image_path).name in self._earlier_stems

    def _output_stem(self, image_path: Path) -> str:
        """The stem an earlier run gave this image, else its own stem made unique: a.jpg and
        a.png in one folder must not overwrite each other's masks."""
        earlier = self._earlier_stems.get(image_path.name)
        if earlier is not None:
            return earlier
        used = self._earlier.keys() | self._reserved | self._current_stems
        stem = image_path.stem
        if stem in used:
            stem = f"{image_path.stem}_{image_path.suffix.lstrip('.')}"
        base, number = stem, 1
        while stem in used:
            number += 1
            stem = f"{base}_{number}"
        return stem

    def add(self, image_path: Path, image: np.ndarray, masks: list[BoxMask] | np.ndarray, *details, **named) -> None:
        """Queue this image's mask PNGs, overlay and record; `details` (scores, seconds, quality,
        orientation) as `RecordWriter.write` takes them. The COCO file comes at close()."""
        stem = self._output_stem(Path(image_path))
        self._records.write(stem, Path(image_path), image, masks, *details, **named)
        self._taken(stem)

    def reserve_stem(self, image_path: Path) -> str:
        """The stem this image's outputs get, reserved for a worker that writes them elsewhere
        (`RecordWriter` on a cluster); `adopt` takes its record in once written."""
        stem = self._output_stem(Path(image_path))
        self._reserved.add(stem)
        return stem

    def adopt(self, stem: str) -> bool:
        """Take in the record a worker wrote for a reserved stem; False when it is not there
        (close() reads and checks it)."""
        if not (self._records_dir / f"{stem}.json").is_file():
            return False
        self._taken(stem)
        return True

    def _taken(self, stem: str) -> None:
        self._earlier.pop(stem, None)
        self._current.append(stem)
        self._current_stems.add(stem)

    def flush(self) -> None:
        """Every image added so far is on disk (files are written in the background)."""
        self._records.flush()

    def add_failure(self, image_path: Path, error: str) -> None:
        """Record an image that could not be processed, so the report lists it (a later run
        into the same folder tries it again)."""
        self._current.append(
            {
                "file": Path(image_path).name,
                "status": "failed",
                "error": str(error),
                "seconds": None,
                "structures": {},
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

    def _write_coco(self, stems: list[str]) -> list[dict]:
        """predictions.json streamed from the records of `stems` (images, then annotations: each
        record is read twice, none is kept), every annotation checked as it is written; returns
        the images' report entries."""
        path = self.out_dir / PREDICTIONS_NAME
        info = {**self.info, "date_created": datetime.now(timezone.utc).isoformat()}
        categories = [{"id": index + 1, "name": name, "supercategory": "structure"}
                      for index, name in enumerate(self.structures)]
        entries: list[dict] = []

        def records():
            for stem in stems:
                record = read_record(self._records_dir / f"{stem}.json")
                if record is None:
                    raise SamPalError(f"{self._records_dir / stem}.json went missing during the run; run predict again")
                yield record

        with atomic_file(path) as temp, open(temp, "w", encoding="utf-8") as out:
            out.write('{"info": ' + json.dumps(info) + ',\n"images": [')
            for image_id, record in enumerate(records(), start=1):
                entries.append(record["report"])
                image = {"id": image_id, "file_name": record["report"]["file"], "width": record["width"],
                         "height": record["height"]}
                if "adapter" in record["report"]:  # which library adapter segmented it, with the confidence
                    image["sam2pal_adapter"] = record["report"]["adapter"]
                out.write((",\n" if image_id > 1 else "\n") + json.dumps(image))
            out.write('],\n"annotations": [')
            count = 0
            for image_id, record in enumerate(records(), start=1):
                height, width = record["height"], record["width"]
                for annotation in record["annotations"]:
                    count += 1
                    annotation = {"id": count, "image_id": image_id, **annotation,
                                  "segmentation": self._segmentation(annotation, height, width)}
                    check_annotation(annotation, height, width, str(path))
                    out.write((",\n" if count > 1 else "\n") + json.dumps(annotation))
            out.write('],\n"categories": ' + json.dumps(categories) + "}\n")
        return entries

    def close(self) -> dict:
        """Write predictions.json and report.json (and the zip), return the report."""
        self._records.close()
        stems = list(self._earlier) + [item for item in self._current if isinstance(item, str)]
        entries = iter(self._write_coco(stems))
        earlier = [next(entries) for _ in self._earlier]
        current = [item if isinstance(item, dict) else next(entries) for item in self._current]
        report = RunReport.build(self.out_dir, self.info.get("model_description"), self.structures,
                                 self.options.polygons, earlier + current, self._notes, len(self._earlier))
        report.write()
        if self.options.zip:
            write_zip(report.zip, self.out_dir, report.result_files())
        return report.data
