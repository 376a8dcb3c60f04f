"""A run's report (`OUT/report.json`) and the names of the files a run leaves: one owner of that
format. The writer builds it, a correction updates it, the web app and jobs read it, all here.

Per segmented image an entry holds: `file`, `status`, `error`, `seconds`, `structures` (area,
score, quality-check numbers, `corrected`), `qc_score`, `flags`, `orientation`, and `files`
(the mask PNG of each structure and the overlay, relative to the run folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sam2pal.errors import SamPalError
from sam2pal.io.files import atomic_write_json, read_json_object

RECORDS_DIR = ".records"
PREDICTIONS_NAME = "predictions.json"
REPORT_NAME = "report.json"
ZIP_NAME = "results.zip"
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"


def run_files(folder: str | Path) -> dict[str, str]:
    """What a finished predict job hands out (name -> path), for a run written into `folder`."""
    folder = Path(folder)
    return {"predictions": str(folder / PREDICTIONS_NAME), "report": str(folder / REPORT_NAME),
            "overlays": str(folder / OVERLAYS_DIR), "masks": str(folder / MASKS_DIR),
            "results_zip": str(folder / ZIP_NAME)}


def entry_files(entry: dict) -> list[str]:
    """The files written for one segmented image: its mask PNGs, then its overlay."""
    return [*entry["files"]["masks"].values(), entry["files"]["overlay"]]


ADAPTER_UNCERTAIN = "adapter uncertain"


def review_fields(quality: list[dict] | None, orientation: str | None, adapter: dict | None = None) -> dict:
    """Per image: the worst structure's round-trip IoU (the number to sort a review by), all
    flags, the orientation kept by an orientation search, and the library adapter chosen."""
    fields: dict = {}
    if orientation is not None:
        fields["orientation"] = orientation
    flags: set[str] = set()
    if quality is not None:
        trips = [q["round_trip_iou"] for q in quality if q.get("round_trip_iou") is not None]
        fields["qc_score"] = min(trips) if trips else None
        flags = {flag for q in quality for flag in q.get("flags", [])}
    if adapter is not None:
        fields["adapter"] = adapter
        if adapter["name"] is None:
            flags.add(ADAPTER_UNCERTAIN)
    if quality is not None or flags:
        fields["flags"] = sorted(flags)
    return fields


def review_order(entries: list[dict]) -> list[str]:
    """Image files a reviewer should open first: lowest quality-check score first."""
    scored = [e for e in entries if e["status"] == "ok" and e.get("qc_score") is not None]
    return [e["file"] for e in sorted(scored, key=lambda e: e["qc_score"])]


@dataclass
class RunReport:
    folder: Path
    data: dict

    @classmethod
    def build(cls, folder: Path, model: str | None, structures: list[str], polygons: bool, entries: list[dict],
              notes: list[dict], from_earlier_runs: int) -> "RunReport":
        n_ok = sum(entry["status"] == "ok" for entry in entries)
        return cls(Path(folder), {
            "model": model,
            "structures": structures,
            "segmentation": "polygons" if polygons else "rle",
            "images": entries + notes,
            "n_ok": n_ok,
            "n_failed": len(entries) - n_ok,
            "n_skipped": len(notes),
            "n_from_earlier_runs": from_earlier_runs,
            "review_order": review_order(entries),
        })

    @classmethod
    def read(cls, folder: str | Path) -> "RunReport":
        folder = Path(folder)
        data = read_json_object(folder / REPORT_NAME)
        if data is None or not isinstance(data.get("images"), list):
            raise SamPalError(f"{folder / REPORT_NAME} is missing or damaged: run predict into {folder} again")
        return cls(folder, data)

    def write(self) -> None:
        atomic_write_json(self.path, self.data)

    @property
    def path(self) -> Path:
        return self.folder / REPORT_NAME

    @property
    def predictions(self) -> Path:
        return self.folder / PREDICTIONS_NAME

    @property
    def zip(self) -> Path:
        return self.folder / ZIP_NAME

    @property
    def structures(self) -> list[str]:
        return self.data["structures"]

    @property
    def polygons(self) -> bool:
        return self.data.get("segmentation") == "polygons"

    def segmented(self) -> list[dict]:
        return [entry for entry in self.data["images"] if entry["status"] == "ok"]

    def entry(self, file_name: str) -> dict:
        found = next((e for e in self.segmented() if e["file"] == file_name), None)
        if found is None:
            raise SamPalError(f"{file_name} has no segmentation in {self.folder}; pick an image the run segmented")
        return found

    def mask_files(self, file_name: str) -> dict[str, Path]:
        """Structure -> its mask PNG for one image (names as the writer made them)."""
        return {name: self.folder / path for name, path in self.entry(file_name)["files"]["masks"].items()}

    def overlay_file(self, entry: dict) -> Path:
        return self.folder / entry["files"]["overlay"]

    def result_files(self) -> list[str]:
        """Everything a results zip holds, in report order."""
        return [PREDICTIONS_NAME, REPORT_NAME, *(name for e in self.segmented() for name in entry_files(e))]

    def mark_corrected(self, file_name: str, structure: str, area: int) -> dict:
        """A person fixed this structure: no score or QC numbers any more, and the image's review
        fields come from the structures not corrected. Returns the image's entry."""
        entry = self.entry(file_name)
        entry["structures"][structure] = {"area": area, "score": None, "corrected": True}
        if "qc_score" in entry:
            checked = [s["qc"] for s in entry["structures"].values() if "qc" in s]
            entry.update(review_fields(checked, entry.get("orientation"), entry.get("adapter")))
        self.data["review_order"] = review_order(self.data["images"])
        return entry
