"""Named API endpoints, so a script (or another sam2pal server) can drive this one.

`predict` and `train` take files and return files in one call; `submit_job`, `job_status`,
`cancel_job` and `job_file` expose the job lifecycle that the remote backend uses. Each call gets
its own workspace, like a browser session.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import gradio as gr
from gradio.data_classes import FileData

from sam2pal.errors import SamPalError
from sam2pal.jobs import SUBMITTABLE_FIELDS, JobStatus

_POLL_SECONDS = 0.5


def _path(file: FileData | dict) -> str:
    """Uploads keep their original name as the file's base name (template lookups need it)."""
    return file["path"] if isinstance(file, dict) else file.path


def register_api(ui) -> None:
    """Add the endpoints to the Blocks being built (call inside `with gr.Blocks()`)."""

    def _prepare(templates: FileData, template_images: list[FileData], specimens: list[FileData]):
        _, ws = ui.workspaces.get(None)
        try:
            ws.import_coco(_path(templates), [_path(f) for f in template_images or []])
            ws.add_specimens([_path(f) for f in specimens or []], ui.config.limits)
        except SamPalError as exc:
            raise gr.Error(str(exc)) from exc
        return ws

    def _wait(job_id: str) -> JobStatus:
        status = ui.backend.wait(job_id, poll=_POLL_SECONDS)
        if status.state != "done":
            raise gr.Error(status.error or f"job {status.state}")
        return status

    def predict(templates: FileData, template_images: list[FileData], specimens: list[FileData],
                image_size: int = 0, orientation: str = "none") -> tuple[FileData, FileData, str]:
        """Segment the specimens from the COCO templates; returns (predictions.json, results.zip, report JSON)."""
        ws = _prepare(templates, template_images, specimens)
        spec = ui._spec(ws, "predict", image_size=image_size or ui.config.image_size, orientation=orientation)
        status = _wait(ui.backend.start(spec))
        return (FileData(path=status.files["predictions"]), FileData(path=status.files["results_zip"]),
                Path(status.files["report"]).read_text())

    def train(templates: FileData, template_images: list[FileData], specimens: list[FileData], epochs: int = 5,
              mode: str = "lora", steps_per_epoch: int = 0, image_size: int = 0) -> tuple[FileData, str]:
        """Palindrome fine-tuning; returns (adapter.zip, validation JSON)."""
        ws = _prepare(templates, template_images, specimens)
        train_config = {"epochs": int(epochs), "mode": mode}
        if steps_per_epoch:
            train_config["steps_per_epoch"] = int(steps_per_epoch)
        spec = ui._spec(ws, "train", image_size=image_size or ui.config.image_size, train=train_config)
        status = _wait(ui.backend.start(spec))
        validation = Path(status.files["adapter"]) / "validation.json"
        return FileData(path=status.files["adapter_zip"]), validation.read_text()

    def submit_job(kind: str, templates: FileData, template_images: list[FileData], specimens: list[FileData],
                   params: str = "{}", adapter: FileData | None = None) -> str:
        """Start a job without waiting; `params` is JSON with JobSpec fields (image_size, model, train, …);
        `adapter`: an adapter.zip to predict with. Returns its id."""
        if kind not in ("predict", "train"):
            raise gr.Error(f"job kind {kind!r}: submit 'predict' or 'train'")
        try:
            asked = json.loads(params or "{}")
        except json.JSONDecodeError as exc:
            raise gr.Error(f"params is not JSON ({exc.msg}); send an object such as {{\"image_size\": 512}}") from exc
        if not isinstance(asked, dict):
            raise gr.Error("params must be a JSON object of job settings")
        unknown = sorted(set(asked) - set(SUBMITTABLE_FIELDS))
        if unknown:
            raise gr.Error(f"params.{unknown[0]} cannot be set by a client; allowed: {', '.join(SUBMITTABLE_FIELDS)}")
        ws = _prepare(templates, template_images, specimens)
        extra = dict(asked)
        if adapter is not None:
            if kind != "predict":
                raise gr.Error("an adapter is used by predict jobs only; submit kind 'predict' with it")
            try:
                extra["adapter"] = str(ws.store_adapter(_path(adapter)))  # a folder the server chose
            except SamPalError as exc:
                raise gr.Error(str(exc)) from exc
        extra.setdefault("image_size", ui.config.image_size)
        return ui.backend.start(ui._spec(ws, kind, **extra))

    def job_status(job_id: str) -> str:
        """The job's state, progress, message, events and result file names, as JSON."""
        try:
            status = ui.backend.status(job_id)
        except KeyError as exc:
            raise gr.Error(f"no job {job_id} on this server") from exc
        data = asdict(status)
        data["files"] = sorted(status.files)
        return json.dumps(data)

    def cancel_job(job_id: str) -> str:
        ui.backend.cancel(job_id)
        return "cancelling"

    def job_file(job_id: str, name: str) -> FileData:
        """One result file of a finished job (predictions, report, results_zip, adapter_zip)."""
        status = ui.backend.status(job_id)
        path = status.files.get(name)
        if path is None or not Path(path).is_file():
            raise gr.Error(f"job {job_id} has no file {name!r}; it has {sorted(status.files)}")
        return FileData(path=path)

    for endpoint in (predict, train, submit_job, job_status, cancel_job, job_file):
        gr.api(endpoint, api_name=endpoint.__name__)

