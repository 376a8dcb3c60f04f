"""Reading a finished run for the review page: the gallery's ranking and each image's masks."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from sam2pal.io.run_report import RunReport
from sam2pal.jobs import JobStatus


def ranking(report_path: Path) -> list[tuple[Path, str, str]]:
    """(overlay, caption, image file) of every segmented image, lowest quality first."""
    report = RunReport.read(report_path.parent)
    items = []
    for entry in report.segmented():
        scores = [structure_quality(s) for s in entry["structures"].values()]
        quality = min(scores) if scores else 0.0
        flags = entry.get("flags", [])  # the quality check's, over every structure not yet corrected
        fixed = [name for name, s in entry["structures"].items() if s.get("corrected")]
        caption = f"{entry['file']} · QC {quality:.2f}" + (f" · {', '.join(flags)}" if flags else "")
        caption += f" · corrected: {', '.join(fixed)}" if fixed else ""
        path = report.overlay_file(entry)
        if path.is_file():
            items.append((quality, path, caption, entry["file"]))
    return [(p, c, f) for _, p, c, f in sorted(items, key=lambda item: item[0])]


def clicked_file(ranked: list[tuple[Path, str, str]], evt: gr.SelectData) -> str:
    """The image whose overlay was clicked. By caption (it starts with the file name) rather than
    position: a correction re-ranks the gallery, and the page may not have refreshed yet."""
    caption = evt.value.get("caption") if isinstance(evt.value, dict) else None
    if caption:
        for _, _, file_name in ranked:
            if caption.startswith(f"{file_name} · "):
                return file_name
    return ranked[evt.index][2]


def structure_quality(structure: dict) -> float:
    """The number a reviewer sorts by: the round-trip IoU where there is one, else the score; a
    structure a person corrected counts as right."""
    if structure.get("corrected"):
        return 1.0
    value = (structure.get("qc") or {}).get("round_trip_iou")
    if value is None:
        value = structure.get("score")
    return float(value) if value is not None else 0.0


def run_folder(status: JobStatus) -> Path:
    return Path(status.files["report"]).parent
