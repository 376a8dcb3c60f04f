"""The sam2pal web app: templates → optional fine-tune → segment the collection → export.

The UI holds no model: every job goes to a `Backend` (a worker process, a GPU Space, another
server) and the page polls it, so a job survives a closed tab and the page re-attaches on reload.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from backends.base import Backend
from sam2pal.errors import SamPalError
from sam2pal.io.images import load_image
from sam2pal.io.outputs import replace_mask, structure_color
from sam2pal.jobs import JobSpec, JobStatus
from sam2pal.ui.api import register_api
from sam2pal.ui.editing import corrected, editor_image, layer_masks, overview, review_items, tinted
from sam2pal.ui.workspace import Limits, Workspace, Workspaces

CSS = "#editor canvas {cursor: crosshair}"


@dataclass
class AppConfig:
    model: str = "facebook/sam2.1-hiera-tiny"
    image_size: int = 1024
    device: str = "auto"
    batch_size: int = 4
    models: tuple[str, ...] = ()  # what a user may pick per run; `model` is always among them
    limits: Limits = field(default_factory=Limits)
    max_file_size: str = "100mb"


def _hex(color: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % color


def _editor(names: list[str], value=None) -> gr.ImageEditor:
    colors = [_hex(structure_color(i)) for i in range(max(1, len(names)))]
    return gr.ImageEditor(
        value=value,
        layers=gr.LayerOptions(layers=names or ["structure"], allow_additional_layers=False),
        brush=gr.Brush(colors=colors, default_color=colors[0], color_mode="fixed"),
    )


def _error(exc: SamPalError) -> gr.Error:
    return gr.Error(str(exc))


class SamPalApp:
    """Handlers of the page; each takes the session token and works in that session's workspace."""

    def __init__(self, config: AppConfig, backend: Backend, workspaces: Workspaces | None = None):
        self.config = config
        self.backend = backend
        self.workspaces = workspaces or Workspaces()
        self._rankings: dict[str, tuple[int, list]] = {}  # report path -> (its mtime, its ranking)

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
        first = Path(imported.templates[0].name).name
        return ("\n".join(ws.structures), gr.Dropdown(choices=names, value=first), _editor(ws.structures),
                f"Imported {len(imported.templates)} templates with {len(imported.structures)} structures.")

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
                review_items(image, masks, ws.structures), background)

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
        image = ws.template_image(name)
        shown = editor_image(image)
        scale = image.shape[1] / shown.shape[1]
        points = points + [[evt.index[0] * scale, evt.index[1] * scale, 0 if kind.startswith("outside") else 1]]
        spec = JobSpec(kind="points", workdir=str(ws.job_dir()), templates="", images=str(ws.root / "templates" / name),
                       model=self.config.model, image_size=self.config.image_size, device=self.config.device,
                       points=points)
        # longer than the local click lane's own 600 s limit, so its "no mask" message is what shows
        status = self.backend.wait(self.backend.start(spec), timeout=900)
        if status.state != "done":
            raise gr.Error(status.error or f"the click job was {status.state}")
        mask = np.asarray(Image.open(status.files["mask"])) > 0
        return points, status.files["mask"], _with_points(tinted(image, mask, 0), points, scale), f"{len(points)} points"

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
        return JobSpec(kind=kind, workdir=str(ws.job_dir()), templates=str(templates), images=str(ws.specimen_dir()),
                       template_images=str(templates.parent), device=self.config.device, **extra)

    @property
    def choices(self) -> list[str]:
        """Models a user may pick: the server's default first."""
        return list(dict.fromkeys((self.config.model, *self.config.models)))

    def start_training(self, epochs: float, mode: str, lr: float | None, image_size: str, model: str, token: str) -> str:
        ws = self._ws(token)
        train = {"epochs": int(epochs), "mode": mode}
        if lr:
            train["lr"] = float(lr)
        job_id = self.backend.start(self._spec(ws, "train", image_size=int(image_size), train=train, model=model))
        ws.remember_job("train", job_id)
        return "Fine-tuning queued…"

    def start_prediction(self, adapter_choice: str, orientation: str, image_size: str, model: str, token: str) -> str:
        ws = self._ws(token)
        adapter = None
        if adapter_choice == "fine-tuned here":
            adapter = self._adapter_dir(ws)
            if adapter is None:
                raise gr.Error("No finished fine-tune in this session; choose 'none' or upload an adapter.")
        elif adapter_choice == "uploaded":
            adapter = ws.root / "uploaded_adapter"
            if not adapter.is_dir():
                raise gr.Error("Upload an adapter zip first (Fine-tune tab).")
        job_id = self.backend.start(self._spec(ws, "predict", image_size=int(image_size), orientation=orientation,
                                               adapter=str(adapter) if adapter else None, model=model))
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

    def training_view(self, token: str):
        """Progress line, loss curve, per-structure validation against zero-shot, adapter file."""
        status = self._status(self._ws(token), "train")
        if status is None:
            return "No fine-tune yet.", None, None, None
        steps = [e for e in status.events if e["type"] == "step"]
        loss = {"step": [e["step"] for e in steps], "loss": [e["loss"] for e in steps]}
        epochs = [e for e in status.events if e["type"] == "epoch"]
        rows = [{"epoch": e["epoch"], "structure": name, "IoU": iou}
                for e in epochs for name, iou in (e.get("validation_iou") or {}).items()]
        table = [[r["epoch"], r["structure"], round(r["IoU"], 4)] for r in rows]
        line = f"{status.state}: {status.message}" + (f" — {status.error}" if status.error else "")
        adapter = status.files.get("adapter_zip") if status.state == "done" else None
        return line, {"step": loss["step"], "loss": loss["loss"]} if steps else None, table or None, adapter

    def prediction_view(self, token: str):
        """Progress line and the overlays, worst quality first."""
        ws = self._ws(token)
        status = self._status(ws, "predict")
        if status is None:
            return "No segmentation yet.", []
        line = f"{status.state}: {status.message}" + (f" — {status.error}" if status.error else "")
        if status.state != "done":
            return line, []
        return line, [(str(path), caption) for path, caption, _ in self._ranked(status)]

    def _ranked(self, status: JobStatus) -> list[tuple[Path, str, str]]:
        """The ranking of this job's report, read again only when the report changed (every open
        page asks once a second)."""
        path = Path(status.files["report"])
        modified = path.stat().st_mtime_ns
        cached = self._rankings.get(str(path))
        if cached is None or cached[0] != modified:
            cached = self._rankings[str(path)] = (modified, _ranking(path))
        return cached[1]

    # --- corrections ------------------------------------------------------------------------

    def open_correction(self, token: str, structure: str | None, evt: gr.SelectData):
        ws = self._ws(token)
        status = self._status(ws, "predict")
        if status is None or status.state != "done":
            raise gr.Error("Run a segmentation first.")
        ranked = self._ranked(status)
        file_name = _clicked_file(ranked, evt)
        return file_name, *self._correction_editor(ws, status, file_name, structure)

    def _correction_editor(self, ws: Workspace, status: JobStatus, file_name: str, structure: str | None,
                           image: np.ndarray | None = None):
        structure = structure or ws.structures[0]
        image = load_image(ws.specimen_dir() / file_name) if image is None else image
        mask = _predicted_mask(_mask_files(status, file_name)[structure], image.shape[:2])
        background = tinted(image, mask, ws.structures.index(structure))
        value = {"background": background, "layers": [], "composite": background}
        editor = gr.ImageEditor(value=value, layers=gr.LayerOptions(layers=["add", "remove"], allow_additional_layers=False),
                                brush=gr.Brush(colors=["#00c000", "#e00000"], color_mode="fixed"))
        return editor, gr.Dropdown(choices=ws.structures, value=structure)

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
        image = load_image(ws.specimen_dir() / file_name)
        files = _mask_files(status, file_name)
        predicted = _predicted_mask(files[structure], image.shape[:2])
        try:
            mask = corrected(predicted, value)
        except SamPalError as exc:
            raise _error(exc) from exc
        try:
            replace_mask(Path(status.files["report"]).parent, file_name, structure, mask, image)
        except SamPalError as exc:
            raise _error(exc) from exc
        note = f"{file_name}: {structure} corrected ({int(mask.sum())} px)."
        if to_templates:
            shutil.copy(ws.specimen_dir() / file_name, ws.root / "templates" / file_name)
            for name in ws.structures:
                ws.set_mask(file_name, name, mask if name == structure else _predicted_mask(files[name], image.shape[:2]))
            note += " Added to the templates for the next round."
        return note, *self._correction_editor(ws, status, file_name, structure, image)

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

    def upload_adapter(self, archive: str | None, token: str) -> str:
        if not archive:
            return "No adapter uploaded."
        target = self._ws(token).root / "uploaded_adapter"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        try:
            with zipfile.ZipFile(archive) as bundle:
                for member in bundle.infolist():
                    name = Path(member.filename).name
                    if name in ("adapter_model.safetensors", "adapter_config.json"):
                        (target / name).write_bytes(bundle.read(member))
        except zipfile.BadZipFile as exc:
            raise gr.Error(f"{Path(archive).name} is not a zip file: upload the adapter.zip a fine-tune produced") from exc
        if not (target / "adapter_config.json").is_file():
            raise gr.Error(f"{Path(archive).name} holds no adapter_config.json: upload the adapter.zip a fine-tune produced")
        return "Adapter uploaded; choose 'uploaded' when segmenting."


def _with_points(image: np.ndarray, points: list, scale: float) -> np.ndarray:
    """The click image at editor size with green (inside) and red (outside) dots."""
    from PIL import ImageDraw

    shown = Image.fromarray(editor_image(image))
    draw = ImageDraw.Draw(shown)
    radius = max(3, shown.width // 150)
    for x, y, label in points:
        cx, cy = x / scale, y / scale
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius),
                     fill=(0, 200, 0) if label else (220, 0, 0), outline=(255, 255, 255))
    return np.asarray(shown)


def _ranking(report_path: Path) -> list[tuple[Path, str, str]]:
    """(overlay, caption, image file) of every segmented image, lowest quality first."""
    report = json.loads(report_path.read_text())
    out = report_path.parent
    items = []
    for entry in report["images"]:
        if entry["status"] != "ok":
            continue
        scores = [_quality(s) for s in entry["structures"].values()]
        quality = min(scores) if scores else 0.0
        flags = entry.get("flags", [])  # the quality check's, over every structure not yet corrected
        fixed = [name for name, s in entry["structures"].items() if s.get("corrected")]
        caption = f"{entry['file']} · QC {quality:.2f}" + (f" · {', '.join(flags)}" if flags else "")
        caption += f" · corrected: {', '.join(fixed)}" if fixed else ""
        path = out / entry["files"]["overlay"]
        if path.is_file():
            items.append((quality, path, caption, entry["file"]))
    return [(p, c, f) for _, p, c, f in sorted(items, key=lambda item: item[0])]


def _clicked_file(ranked: list[tuple[Path, str, str]], evt: gr.SelectData) -> str:
    """The image whose overlay was clicked. By caption (it starts with the file name) rather than
    position: a correction re-ranks the gallery, and the page may not have refreshed yet."""
    caption = evt.value.get("caption") if isinstance(evt.value, dict) else None
    if caption:
        for _, _, file_name in ranked:
            if caption.startswith(f"{file_name} · "):
                return file_name
    return ranked[evt.index][2]


def _quality(structure: dict) -> float:
    """The number a reviewer sorts by: the round-trip IoU where there is one, else the score; a
    structure a person corrected counts as right."""
    if structure.get("corrected"):
        return 1.0
    value = (structure.get("qc") or {}).get("round_trip_iou")
    if value is None:
        value = structure.get("score")
    return float(value) if value is not None else 0.0


def _mask_files(status: JobStatus, file_name: str) -> dict[str, Path]:
    """The mask PNG the writer made for each structure of this image (names cleaned and unique)."""
    report = Path(status.files["report"])
    entry = next(e for e in json.loads(report.read_text())["images"] if e["file"] == file_name and e["status"] == "ok")
    return {name: report.parent / path for name, path in entry["files"]["masks"].items()}


def _predicted_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0 if path.is_file() else np.zeros(shape, dtype=bool)


def launch_options(config: AppConfig, workspaces: Workspaces) -> dict:
    """What `launch` needs besides where to listen: upload cap, no run history kept in the
    browser (a shared host), the page's CSS, and the session folders results are served from."""
    return {"max_file_size": config.max_file_size, "run_history": False, "css": CSS,
            "allowed_paths": [str(workspaces.root)]}


def build_app(config: AppConfig, backend: Backend | None = None, workspaces: Workspaces | None = None) -> gr.Blocks:
    if backend is None:
        from backends.local import LocalBackend

        backend = LocalBackend()
    ui = SamPalApp(config, backend, workspaces)
    with gr.Blocks(title="sam2pal", delete_cache=(3600, 3600)) as app:
        token = gr.BrowserState(None, storage_key="sam2pal_session")
        gr.Markdown("# sam2pal\nAnnotate a few template specimens, segment the same structures on the whole "
                    f"collection, review, download COCO. Model: `{config.model}` · jobs: {backend.describe()}")
        with gr.Tab("1. Templates"):
            with gr.Row():
                with gr.Column(scale=1):
                    template_files = gr.File(label="Template images", file_count="multiple", file_types=["image"],
                                             elem_id="template-files")
                    structures = gr.Textbox(label="Structures (one per line)", lines=4, placeholder="scape\neye\nwing",
                                            elem_id="structures")
                    apply = gr.Button("Apply structures", elem_id="apply-structures")
                    with gr.Accordion("Import a COCO template file", open=False):
                        coco_file = gr.File(label="COCO JSON", file_types=[".json"])
                        coco_images = gr.File(label="Its images", file_count="multiple", file_types=["image"])
                        import_button = gr.Button("Import")
                    template_choice = gr.Dropdown(label="Template in the editor", choices=[])
                with gr.Column(scale=3):
                    editor = gr.ImageEditor(label="Draw each structure on its own layer", type="numpy", image_mode="RGBA",
                                            format="png", transforms=(), elem_id="editor",
                                            layers=gr.LayerOptions(layers=["structure"], allow_additional_layers=False))
                    with gr.Row():
                        save = gr.Button("Save masks", variant="primary", elem_id="save-masks")
                        structure_choice = gr.Radio(label="Structure", choices=[])
                        clear = gr.Button("Clear this structure's mask")
            template_note = gr.Markdown(elem_id="template-note")
            review = gr.Gallery(label="Review: each structure's mask as the server received it", columns=4, height=320,
                                object_fit="contain", elem_id="review")
            with gr.Accordion("Or click points on a structure for a SAM2 mask", open=False):
                with gr.Row():
                    template_preview = gr.Image(label="Click inside (or outside) the structure", interactive=False,
                                                elem_id="click-image", scale=3)
                    with gr.Column(scale=1):
                        point_kind = gr.Radio(label="Click adds a point", value="inside (positive)",
                                              choices=["inside (positive)", "outside (negative)"])
                        point_note = gr.Markdown()
                        accept_points = gr.Button("Accept into the selected structure")
                        reset_points = gr.Button("Clear points")
            points = gr.State([])
            point_mask = gr.State(None)
            download_templates = gr.DownloadButton("Download template set (COCO)")
        with gr.Tab("2. Fine-tune (optional)"):
            specimen_files_t = gr.File(label="Specimen photos (or a zip)", file_count="multiple")
            specimen_note_t = gr.Markdown()
            with gr.Row():
                epochs = gr.Number(label="Epochs", value=5, precision=0, minimum=1)
                mode = gr.Radio(label="Mode", choices=["lora", "decoder", "full"], value="lora")
                lr = gr.Number(label="Learning rate (empty: default for the mode)", value=None)
                train_size = gr.Dropdown(label="Image size", choices=["256", "512", "768", "1024"], value=str(config.image_size))
                train_model = gr.Dropdown(label="Model", choices=ui.choices, value=config.model)
            with gr.Row():
                start_train = gr.Button("Start fine-tuning", variant="primary")
                cancel_train = gr.Button("Cancel")
            train_status = gr.Textbox(label="Status", interactive=False)
            loss_plot = gr.LinePlot(x="step", y="loss", label="Training loss")
            validation = gr.Dataframe(headers=["epoch", "structure", "IoU"], label="Validation IoU (epoch 0 = zero-shot)")
            adapter_file = gr.File(label="Adapter (download)")
            adapter_upload = gr.File(label="Upload an adapter zip from an earlier fine-tune", file_types=[".zip"])
            adapter_note = gr.Markdown()
        with gr.Tab("3. Segment the collection"):
            specimen_files = gr.File(label="Specimen photos (or a zip)", file_count="multiple", elem_id="specimens")
            specimen_note = gr.Markdown()
            with gr.Row():
                adapter_choice = gr.Radio(label="Adapter", choices=["none", "fine-tuned here", "uploaded"], value="none")
                orientation = gr.Dropdown(label="Orientation search", choices=["none", "rot4", "rot4flip"], value="none")
                predict_size = gr.Dropdown(label="Image size", choices=["256", "512", "768", "1024"], value=str(config.image_size))
                predict_model = gr.Dropdown(label="Model (an adapter only fits the model it was trained on)",
                                            choices=ui.choices, value=config.model)
                clear_specimens = gr.Button("Remove all specimens")
            with gr.Row():
                start_predict = gr.Button("Segment collection", variant="primary", elem_id="segment")
                cancel_predict = gr.Button("Cancel")
            predict_status = gr.Textbox(label="Status", interactive=False, elem_id="predict-status")
            gallery = gr.Gallery(label="Results, worst quality first (click one to correct it)", columns=4, height=420,
                                 object_fit="contain", elem_id="results")
            with gr.Accordion("Correct a structure", open=True):
                corrected_file = gr.Textbox(label="Specimen", interactive=False)
                correction_structure = gr.Dropdown(label="Structure", choices=[])
                correction_editor = gr.ImageEditor(label="Paint on 'add' or 'remove'", type="numpy", image_mode="RGBA",
                                                   format="png", transforms=(),
                                                   layers=gr.LayerOptions(layers=["add", "remove"], allow_additional_layers=False))
                add_to_templates = gr.Checkbox(label="Also add this specimen to the templates for the next round")
                apply_correction = gr.Button("Apply correction")
                correction_note = gr.Markdown()
        with gr.Tab("4. Export"):
            export = gr.Button("Prepare downloads", variant="primary", elem_id="export")
            coco_out = gr.File(label="predictions.json (COCO, checked with pycocotools)", elem_id="coco-out")
            zip_out = gr.File(label="Everything (masks, overlays, report, COCO)")
        timer = gr.Timer(1.0)

        app.load(ui.attach, inputs=[token], outputs=[token, structures, template_choice, editor, specimen_note, template_note],
                 api_visibility="private")
        template_files.upload(ui.upload_templates, [template_files, token], [template_choice], api_visibility="private")
        apply.click(ui.apply_structures, [structures, token], [editor, structure_choice], api_visibility="private").then(
            ui.show_template, [template_choice, token], [editor, review, template_preview], api_visibility="private")
        import_button.click(ui.import_coco, [coco_file, coco_images, token],
                            [structures, template_choice, editor, template_note], api_visibility="private").then(
            ui.show_template, [template_choice, token], [editor, review, template_preview], api_visibility="private")
        template_choice.change(ui.show_template, [template_choice, token], [editor, review, template_preview],
                               api_visibility="private")
        save.click(ui.save_masks, [editor, template_choice, token], [review, template_note], api_visibility="private")
        clear.click(ui.clear_mask, [template_choice, structure_choice, token], [editor, review, template_preview],
                    api_visibility="private")
        template_preview.select(ui.click_point, [points, point_kind, template_choice, token],
                                [points, point_mask, template_preview, point_note], api_visibility="private")
        accept_points.click(ui.accept_points, [point_mask, template_choice, structure_choice, token],
                            [points, point_mask, editor, review, template_preview, point_note], api_visibility="private")
        reset_points.click(lambda name, t: ([], None, *ui.show_template(name, t)[2:], "points cleared"),
                           [template_choice, token], [points, point_mask, template_preview, point_note],
                           api_visibility="private")
        download_templates.click(ui.download_templates, [token], [download_templates], api_visibility="private")
        for files, note in ((specimen_files, specimen_note), (specimen_files_t, specimen_note_t)):
            files.upload(ui.upload_specimens, [files, token], [note], api_visibility="private")
        clear_specimens.click(ui.clear_specimens, [token], [specimen_note], api_visibility="private")
        start_train.click(ui.start_training, [epochs, mode, lr, train_size, train_model, token], [train_status], api_visibility="private")
        cancel_train.click(lambda t: ui.cancel("train", t), [token], [train_status], api_visibility="private")
        adapter_upload.upload(ui.upload_adapter, [adapter_upload, token], [adapter_note], api_visibility="private")
        start_predict.click(ui.start_prediction, [adapter_choice, orientation, predict_size, predict_model, token], [predict_status],
                            api_visibility="private")
        cancel_predict.click(lambda t: ui.cancel("predict", t), [token], [predict_status], api_visibility="private")
        timer.tick(ui.training_view, [token], [train_status, loss_plot, validation, adapter_file],
                   api_visibility="private", show_progress="hidden")
        timer.tick(ui.prediction_view, [token], [predict_status, gallery], api_visibility="private", show_progress="hidden")
        gallery.select(ui.open_correction, [token, correction_structure],
                       [corrected_file, correction_editor, correction_structure], api_visibility="private")
        correction_structure.input(ui.change_correction_structure, [corrected_file, correction_structure, token],
                                   [correction_editor, correction_structure], api_visibility="private")
        apply_correction.click(ui.apply_correction,
                               [correction_editor, corrected_file, correction_structure, add_to_templates, token],
                               [correction_note, correction_editor, correction_structure], api_visibility="private")
        export.click(ui.export, [token], [coco_out, zip_out], api_visibility="private")
        register_api(ui)
    return app
