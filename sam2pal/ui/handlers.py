"""What the web app's controls do: each handler takes the page's values and a session token,
talks to the session's workspace and to a `Backend`, and returns what the page shows.

The UI holds no model: every job goes to a backend (a worker process, a GPU Space, another
server) and the page polls it, so a job survives a closed tab and the page re-attaches on reload.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from backends.base import Backend
from sam2pal.errors import SamPalError
from sam2pal.io.images import image_size
from sam2pal.io.overlays import structure_color
from sam2pal.jobs import JobSpec, JobStatus, check_client_request
from sam2pal.synthetic import TRAINED_ON
from sam2pal.ui.editing import (
    CLICK_MAX_SIDE,
    click_image,
    editor_image,
    layer_masks,
    overview,
    review_items,
    tinted,
    with_points,
)
from sam2pal.ui.finetune import FineTuneHandlers
from sam2pal.ui.correcting import ReviewHandlers
from sam2pal.ui.workspace import Limits, Workspace, Workspaces

EXAMPLE_SEED = 1000  # the example collection: an evaluation seed of its own (never pretrained on)


@dataclass
class AppConfig:
    model: str = "facebook/sam2.1-hiera-tiny"
    image_size: int = 1024
    device: str = "auto"
    batch_size: int = 4
    models: tuple[str, ...] = ()  # what a user may pick per run; `model` is always among them
    limits: Limits = field(default_factory=Limits)
    max_file_size: str = "100mb"
    adapter_library: str | None = None  # the server's adapter library, offered as "library (automatic)"


LIBRARY_CHOICE = "library (automatic)"
BUSY_TICK_SECONDS, IDLE_TICK_SECONDS = 1.0, 15.0  # the page's refresh while a job runs, and otherwise


def _hex(color: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % color


def _editor(names: list[str], value=None) -> gr.ImageEditor:
    colors = [_hex(structure_color(i)) for i in range(max(1, len(names)))]
    return gr.ImageEditor(
        value=value,
        layers=gr.LayerOptions(layers=names or ["structure"], allow_additional_layers=False),
        brush=gr.Brush(colors=colors, default_color=colors[0], color_mode="fixed"),
    )


def model_note(model: str) -> str:
    return f" ({TRAINED_ON}: it segments drawn specimens, not photos)" if model.startswith("synthetic") else ""


def _error(exc: SamPalError) -> gr.Error:
    return gr.Error(str(exc))


class SamPalApp(FineTuneHandlers, ReviewHandlers):
    """Handlers of the page; each takes the session token and works in that session's workspace."""

    def __init__(self, config: AppConfig, backend: Backend, workspaces: Workspaces | None = None):
        self.config = config
        self.backend = backend
        self.workspaces = workspaces or Workspaces()
        self._rankings: dict[str, tuple[int, list]] = {}  # report path -> (its mtime, its ranking)
        self._reviews: dict[str, tuple[int, tuple]] = {}  # report path -> (its mtime, corrected files, review order)

    def _ws(self, token: str | None) -> Workspace:
        return self.workspaces.get(token)[1]

    # --- session ----------------------------------------------------------------------------

    def attach(self, token: str | None):
        """On page load: the same workspace and jobs as before the reload, or a new workspace."""
        token, ws = self.workspaces.get(token)
        names = ws.template_names()
        ready = f"Session ready: {len(names)} template images, {len(ws.specimens())} specimen images."
        return (token, "\n".join(ws.structures), gr.Dropdown(choices=names, value=names[0] if names else None),
                _editor(ws.structures), self._specimen_note(ws), ready)

    # --- templates --------------------------------------------------------------------------

    def upload_templates(self, files: list[str] | None, token: str):
        ws = self._ws(token)
        try:
            ws.add_template_images(files or [])
        except SamPalError as exc:
            raise _error(exc) from exc
        names = ws.template_names()
        return gr.Dropdown(choices=names, value=names[-1] if names else None)

    def import_coco(self, coco_file: str | None, images: list[str] | None, token: str):
        if not coco_file:
            raise gr.Error("Choose the COCO template file (and its images) first.")
        ws = self._ws(token)
        try:
            imported = ws.import_coco(coco_file, images or [])
        except SamPalError as exc:
            raise _error(exc) from exc
        names = ws.template_names()
        first = ws.stored_name(imported.templates[0].name)
        note = f"Imported {len(imported.templates)} templates with {len(imported.structures)} structures."
        for warning in imported.warnings:  # skipped categories, lost annotations: the user must see them
            gr.Warning(warning)
        note += "".join(f"\n- {warning}" for warning in imported.warnings)
        return "\n".join(ws.structures), gr.Dropdown(choices=names, value=first), _editor(ws.structures), note

    def load_example(self, token: str):
        """A synthetic example collection (2 templates with their structures, 12 specimens), so a
        visitor without photos at hand can run the whole loop in a few clicks."""
        from sam2pal.synthetic.domains import write_collection

        ws = self._ws(token)
        files = write_collection(Path(tempfile.mkdtemp(dir=ws.root)), "in-domain", EXAMPLE_SEED, templates=2, specimens=12)
        imported = ws.import_coco(str(files.templates), [str(p) for p in sorted(files.folder.glob("template_*.png"))])
        ws.add_specimens([str(p) for p in sorted(files.specimens.iterdir())], self.config.limits)
        shutil.rmtree(files.folder)
        names = ws.template_names()
        note = (f"Example collection loaded: {len(imported.templates)} templates of a synthetic {files.taxon} with "
                f"{', '.join(imported.structures)}, and 12 specimens. Go to 3. Segment the collection.")
        return ("\n".join(ws.structures), gr.Dropdown(choices=names, value=names[0]), _editor(ws.structures), note,
                self._specimen_note(ws))

    def apply_structures(self, text: str, token: str):
        ws = self._ws(token)
        try:
            ws.set_structures(text.replace(",", "\n").splitlines())
        except SamPalError as exc:
            raise _error(exc) from exc
        return _editor(ws.structures), gr.Radio(choices=ws.structures, value=ws.structures[0] if ws.structures else None)

    def show_template(self, name: str | None, token: str):
        """The template in the editor (existing masks tinted into the background) and its review."""
        ws = self._ws(token)
        if not name:
            return _editor(ws.structures), [], None
        image = ws.template_image(name)
        masks = {s: ws.mask(name, s) for s in ws.structures}
        background = overview(image, masks, ws.structures)
        return (_editor(ws.structures, {"background": background, "layers": [], "composite": background}),
                review_items(image, masks, ws.structures), editor_image(background, CLICK_MAX_SIDE))

    def save_masks(self, value: dict | None, name: str | None, token: str):
        """Each drawn layer replaces its structure's mask; untouched layers keep what was there."""
        ws = self._ws(token)
        if not name:
            raise gr.Error("Upload or choose a template image first.")
        if not ws.structures:
            raise gr.Error("Name the structures and press Apply structures first.")
        image = ws.template_image(name)
        try:
            drawn = layer_masks(value, ws.structures, *image.shape[:2])
        except SamPalError as exc:
            raise _error(exc) from exc
        for structure, mask in drawn.items():
            if mask.any():
                ws.set_mask(name, structure, mask)
        masks = {s: ws.mask(name, s) for s in ws.structures}
        saved = sum(m is not None for m in masks.values())
        return review_items(image, masks, ws.structures), f"{name}: {saved} of {len(ws.structures)} structures have a mask."

    def clear_mask(self, name: str | None, structure: str | None, token: str):
        ws = self._ws(token)
        if name and structure:
            ws.set_mask(name, structure, None)
        return self.show_template(name, token)

    def click_point(self, points: list, kind: str, name: str | None, token: str, evt: gr.SelectData):
        """Add a click (in full-resolution pixels) and ask the backend for SAM2's mask from all clicks."""
        ws = self._ws(token)
        if not name:
            raise gr.Error("Upload or choose a template image first.")
        path = ws.template_path(name)
        shown = click_image(path)  # the click image as the browser shows it
        scale = image_size(path)[0] / shown.shape[1]
        points = points + [[evt.index[0] * scale, evt.index[1] * scale, 0 if kind.startswith("outside") else 1]]
        spec = JobSpec(kind="points", workdir=str(ws.job_dir()), templates="", images=str(path),
                       model=self.config.model, image_size=self.config.image_size, device=self.config.device,
                       points=points)
        try:
            job_id = self.backend.start(spec)
        except SamPalError as exc:
            raise _error(exc) from exc
        # longer than the local click lane's own 600 s limit, so its "no mask" message is what shows
        status = self.backend.wait(job_id, timeout=900, poll=0.02)  # a click waits on every poll
        if status.state != "done":
            raise gr.Error(status.error or f"the click job was {status.state}")
        mask = np.asarray(Image.open(status.files["mask"])) > 0
        return points, status.files["mask"], with_points(tinted(shown, mask, 0, max_side=CLICK_MAX_SIDE), points, scale), f"{len(points)} points"

    def accept_points(self, mask_path: str | None, name: str | None, structure: str | None, token: str):
        """Add the clicked mask to the chosen structure's mask (union), then start a fresh set of clicks."""
        ws = self._ws(token)
        if not mask_path or not name or not structure:
            raise gr.Error("Choose a structure and click on it first.")
        mask = np.asarray(Image.open(mask_path)) > 0
        existing = ws.mask(name, structure)
        ws.set_mask(name, structure, mask if existing is None else existing | mask)
        editor, review, preview = self.show_template(name, token)
        return [], None, editor, review, preview, f"{structure}: clicked mask accepted."

    def download_templates(self, token: str) -> str:
        try:
            return str(self._ws(token).save_templates_coco())
        except SamPalError as exc:
            raise _error(exc) from exc

    # --- collection -------------------------------------------------------------------------

    def _specimen_note(self, ws: Workspace) -> str:
        count = len(ws.specimens())
        return f"{count} specimen images in this session." if count else "No specimen images yet."

    def upload_specimens(self, files: list[str] | None, token: str) -> str:
        ws = self._ws(token)
        try:
            ws.add_specimens(files or [], self.config.limits)
        except SamPalError as exc:
            raise _error(exc) from exc
        return self._specimen_note(ws)

    def clear_specimens(self, token: str) -> str:
        ws = self._ws(token)
        ws.clear_specimens()
        return self._specimen_note(ws)

    # --- jobs -------------------------------------------------------------------------------

    def _spec(self, ws: Workspace, kind: str, **extra) -> JobSpec:
        try:
            templates = ws.save_templates_coco()
        except SamPalError as exc:
            raise _error(exc) from exc
        if not ws.specimens():
            raise gr.Error("Upload specimen photos first.")
        extra.setdefault("batch_size", self.config.batch_size)
        extra.setdefault("model", self.config.model)
        if extra["model"] not in self.choices:
            raise gr.Error(f"model {extra['model']!r} is not offered on this server; pick one of {', '.join(self.choices)}")
        try:
            check_client_request(extra)
        except SamPalError as exc:
            raise _error(exc) from exc
        return JobSpec(kind=kind, workdir=str(ws.job_dir()), templates=str(templates), images=str(ws.specimen_dir()),
                       template_images=str(templates.parent), device=self.config.device, **extra)

    @property
    def choices(self) -> list[str]:
        """Models a user may pick: the server's default first."""
        return list(dict.fromkeys((self.config.model, *self.config.models)))

    def start_prediction(self, adapter_choice: str, orientation: str, image_size: str, model: str, token: str) -> str:
        ws = self._ws(token)
        adapter = None
        if adapter_choice == "fine-tuned here":
            adapter = self._adapter_dir(ws)
            if adapter is None:
                raise gr.Error("No finished fine-tune in this session; choose 'none' or upload an adapter.")
        elif adapter_choice == "uploaded":
            adapter = ws.uploaded_adapter()
            if adapter is None:
                raise gr.Error("Upload an adapter zip first (Fine-tune tab).")
        elif adapter_choice == LIBRARY_CHOICE and self.config.adapter_library is None:
            raise gr.Error("This server has no adapter library; choose another adapter.")
        spec = self._spec(ws, "predict", image_size=int(image_size), orientation=orientation,
                          adapter=str(adapter) if adapter else None, model=model)
        if adapter_choice == LIBRARY_CHOICE:
            spec.library = self.config.adapter_library
        try:
            job_id = self.backend.start(spec)
        except SamPalError as exc:
            raise _error(exc) from exc
        ws.remember_job("predict", job_id)
        return "Segmentation queued…"

    def _status(self, ws: Workspace, kind: str) -> JobStatus | None:
        job_id = ws.job(kind)
        if job_id is None:
            return None
        try:
            return self.backend.status(job_id)
        except KeyError:
            return None  # the server restarted: the job is gone

    def _adapter_dir(self, ws: Workspace) -> Path | None:
        status = self._status(ws, "train")
        return Path(status.files["adapter"]) if status and status.state == "done" else None

    def cancel(self, kind: str, token: str) -> str:
        ws = self._ws(token)
        job_id = ws.job(kind)
        if job_id is not None:
            self.backend.cancel(job_id)
        return "Cancelling…"

    def live_view(self, token: str):
        """What the page's timer refreshes: the fine-tune's and the segmentation's progress, the
        corrections note, and when to tick again: every second while a job of this session runs,
        else every IDLE_TICK_SECONDS (a job started in another tab still shows, and the session
        stays alive). An idle page ticking every second kept a small machine's browser and server
        busy and slowed clicks from 0.35 to 1.1 s."""
        ws = self._ws(token)
        train, predict = self._status(ws, "train"), self._status(ws, "predict")  # once each: a remote backend asks over HTTP
        running = any(s is not None and not s.finished for s in (train, predict))
        return (*self._training_view(train), self._corrections_note(ws, predict), *self._prediction_view(predict),
                gr.Timer(BUSY_TICK_SECONDS if running else IDLE_TICK_SECONDS, active=True))

    # --- export -----------------------------------------------------------------------------

    def export(self, token: str):
        from pycocotools.coco import COCO

        ws = self._ws(token)
        status = self._status(ws, "predict")
        if status is None or status.state != "done":
            raise gr.Error("Run a segmentation first.")
        predictions = Path(status.files["predictions"])
        coco = COCO(str(predictions))  # refuse to offer a file other tools could not read
        for annotation in coco.loadAnns(coco.getAnnIds()):
            coco.annToMask(annotation)
        return str(predictions), status.files["results_zip"]  # corrections keep it current
