"""The review's handlers: the gallery of results, worst quality first, and a correction opened
from it and written into the run (mask, overlay, COCO, report) and, if asked, into the templates.
A part of `SamPalApp` (it uses the app's sessions and backend)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np

from sam2pal.errors import SamPalError
from sam2pal.io.corrections import replace_mask, stored_masks
from sam2pal.io.images import load_photo
from sam2pal.jobs import JobStatus
from sam2pal.ui.editing import EDITOR_MAX_SIDE, corrected, tinted
from sam2pal.ui.review import clicked_file, ranking, run_folder
from sam2pal.ui.workspace import Workspace


class ReviewHandlers:
    def prediction_view(self, token: str):
        return self._prediction_view(self._status(self._ws(token), "predict"))

    def _prediction_view(self, status: JobStatus | None):
        """Progress line and the overlays, worst quality first."""
        if status is None:
            return "No segmentation yet.", []
        line = f"{status.state}: {status.message}" + (f" — {status.error}" if status.error else "")
        if status.state != "done":
            return line, []
        return line, [(str(path), caption) for path, caption, _ in self._ranked(status)]

    def _ranked(self, status: JobStatus) -> list[tuple[Path, str, str]]:
        """The ranking of this job's report, read again only when the report changed (every open
        page asks on every tick of its timer)."""
        path = Path(status.files["report"])
        modified = path.stat().st_mtime_ns
        cached = self._rankings.get(str(path))
        if cached is None or cached[0] != modified:
            cached = self._rankings[str(path)] = (modified, ranking(path))
        return cached[1]

    def open_correction(self, token: str, structure: str | None, evt: gr.SelectData):
        ws = self._ws(token)
        status = self._status(ws, "predict")
        if status is None or status.state != "done":
            raise gr.Error("Run a segmentation first.")
        ranked = self._ranked(status)
        file_name = clicked_file(ranked, evt)
        return file_name, *self._correction_editor(ws, status, file_name, structure)

    def _correction_editor(self, ws: Workspace, status: JobStatus, file_name: str, structure: str | None,
                           image: np.ndarray | None = None):
        structure = structure or ws.structures[0]
        try:
            image = self._review_image(ws, file_name) if image is None else image
            mask = stored_masks(run_folder(status), file_name)[0][self._structure(ws, structure)]
        except SamPalError as exc:
            raise gr.Error(str(exc)) from exc
        background = tinted(image, mask, ws.structures.index(structure))
        value = {"background": background, "layers": [], "composite": background}
        editor = gr.ImageEditor(value=value, layers=gr.LayerOptions(layers=["add", "remove"], allow_additional_layers=False),
                                brush=gr.Brush(colors=["#00c000", "#e00000"], color_mode="fixed"))
        return editor, gr.Dropdown(choices=ws.structures, value=structure)

    @staticmethod
    def _review_image(ws: Workspace, file_name: str) -> np.ndarray:
        """The specimen decoded at the editor's size: the browser gets no more, masks stay full size."""
        return load_photo(ws.specimen_path(file_name), 0, EDITOR_MAX_SIDE).image

    @staticmethod
    def _structure(ws: Workspace, structure: str) -> str:
        if structure not in ws.structures:
            raise SamPalError(f"{structure!r} is not one of this session's structures")
        return structure

    def change_correction_structure(self, file_name: str | None, structure: str | None, token: str):
        ws = self._ws(token)
        status = self._status(ws, "predict")
        if not file_name or status is None:
            return gr.skip(), gr.skip()
        return self._correction_editor(ws, status, file_name, structure)

    def apply_correction(self, value: dict | None, file_name: str | None, structure: str | None, to_templates: bool, token: str):
        """Write the corrected mask into the results (PNG, overlay, COCO, report) and, if asked,
        into the templates."""
        ws = self._ws(token)
        status = self._status(ws, "predict")
        if not file_name or not structure or status is None:
            raise gr.Error("Open a specimen from the gallery first.")
        try:
            image = self._review_image(ws, file_name)
            stored = stored_masks(run_folder(status), file_name)[0]
            predicted = stored[self._structure(ws, structure)]
            mask = corrected(predicted, value)
        except SamPalError as exc:
            raise gr.Error(str(exc)) from exc
        try:
            replace_mask(run_folder(status), file_name, structure, mask, image)
        except SamPalError as exc:
            raise gr.Error(str(exc)) from exc
        note = f"{file_name}: {structure} corrected ({int(mask.sum())} px)."
        if to_templates:
            (added,) = ws.add_template_images([str(ws.specimen_path(file_name))])
            for name in ws.structures:
                ws.set_mask(added, name, mask if name == structure else stored[name])
            note += " Added to the templates for the next round."
        return note, *self._correction_editor(ws, status, file_name, structure, image)
