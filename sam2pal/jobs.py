"""Jobs: a plain, serialisable spec in; a stream of progress events out; files at the end.

A backend decides where a job runs (a worker process here, a GPU Space, another server); this
module is what runs it. Nothing here imports Gradio, and the UI never imports this module's
heavy dependencies: `run_job` imports the engine only when it is called.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

KINDS = ("predict", "train", "points")
STATES = ("queued", "running", "done", "failed", "cancelled")

Emit = Callable[[dict], None]


class JobCancelled(Exception):
    """Raised inside a job when its backend asked it to stop."""


# JobSpec fields a job submitted through the API (and so another server, for the remote backend)
# may set; paths are not among them: the server decides where files go
SUBMITTABLE_FIELDS = ("image_size", "orientation", "train", "batch_size", "model")

# TrainConfig fields a client may choose, with their bounds. The rest (feature cache size and
# folder, pixel cap, memory settings) are the server's own limits, never a client's.
CLIENT_TRAIN_FIELDS: dict[str, tuple] = {
    "epochs": (int, 1, 100), "steps_per_epoch": (int, 1, 10_000), "mode": ("lora", "decoder", "full"),
    "lr": (float, 1e-7, 1e-2), "lora_rank": (int, 1, 64), "lora_encoder": (bool,), "seed": (int, 0, 2**31 - 1),
    "cycle_memory": ("tracked", "mask"), "augment": (bool,), "weight_decay": (float, 0.0, 1.0),
    "folds": (int, 2, 20), "fold": (int, 0, 19),
}
_CLIENT_FIELDS: dict[str, tuple] = {"image_size": (int, 64, 2048), "batch_size": (int, 1, 64),
                                    "orientation": ("none", "rot4", "rot4flip")}


def _check_value(name: str, value: object, rule: tuple) -> None:
    from sam2pal.errors import SamPalError

    kind = rule[0]
    if isinstance(kind, str):  # a list of choices
        if value not in rule:
            raise SamPalError(f"{name} {value!r}: use one of {', '.join(rule)}")
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise SamPalError(f"{name} must be true or false, not {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise SamPalError(f"{name} must be a{'n integer' if kind is int else ' number'}, not {value!r}")
    low, high = rule[1], rule[2]
    if not low <= value <= high:
        raise SamPalError(f"{name} {value} is out of bounds: use {low} to {high}")


def check_client_request(extra: dict) -> None:
    """What a remote client (or a browser) asks of a job: known fields within bounds only,
    refused with a one-line message naming the field. Model choice is checked by the server's
    own list; paths are never accepted."""
    from sam2pal.errors import SamPalError

    for name, rule in _CLIENT_FIELDS.items():
        if name in extra:
            _check_value(name, extra[name], rule)
    if "image_size" in extra and extra["image_size"] % 32:
        raise SamPalError(f"image_size {extra['image_size']} must be a multiple of 32")
    train = extra.get("train", {})
    if not isinstance(train, dict):
        raise SamPalError("train must be an object of fine-tuning settings")
    for name, value in train.items():
        if name not in CLIENT_TRAIN_FIELDS:
            raise SamPalError(f"train.{name} cannot be set by a client; allowed: {', '.join(CLIENT_TRAIN_FIELDS)}")
        if not (name in ("lr", "steps_per_epoch") and value is None):
            _check_value(f"train.{name}", value, CLIENT_TRAIN_FIELDS[name])
    if train.get("fold", 0) >= train.get("folds", 5):
        raise SamPalError(f"train.fold {train['fold']} must be below train.folds ({train.get('folds', 5)})")


@dataclass
class JobSpec:
    """Everything a job needs, as paths and plain values, so it can cross a process boundary."""

    kind: str
    workdir: str
    templates: str  # COCO template file
    images: str  # folder of specimen images
    template_images: str | None = None
    model: str = "facebook/sam2.1-hiera-tiny"
    image_size: int = 1024
    device: str = "auto"
    adapter: str | None = None
    batch_size: int = 4
    orientation: str = "none"
    train: dict = field(default_factory=dict)  # TrainConfig fields
    points: list = field(default_factory=list)  # [x, y, label] clicks on the image `images` names (kind "points")
    labels: str | None = None  # COCO of labelled specimens in `images` (the review's corrections), set by the server
    library: str | None = None  # the server's adapter library: an adapter per photo (predict)
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"job kind {self.kind!r}: use one of {', '.join(KINDS)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        return cls(**json.loads(text))


@dataclass
class JobStatus:
    job_id: str
    kind: str
    state: str
    progress: float = 0.0  # 0..1
    message: str = ""
    events: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # name -> path, once done
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def copy(self) -> "JobStatus":
        """A snapshot a backend can hand out while its watcher thread goes on updating the original."""
        return JobStatus(**{**self.__dict__, "events": list(self.events), "files": dict(self.files)})


def zip_folder(folder: Path, archive: Path) -> Path:
    """Every file under `folder` (hidden files and folders left out) into `archive`, atomically."""
    tmp = archive.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if path.is_file() and not any(part.startswith(".") for part in relative.parts):
                bundle.write(path, path.relative_to(folder))
    tmp.replace(archive)
    return archive


def final_event(work: Callable[[], dict[str, str]]) -> dict:
    """Run `work` (a job, returning its files) and turn how it ended into the job's last event:
    done, cancelled, or error with the message a user can act on. Never raises, so a worker
    always ends its event stream and the server never hangs on it."""
    from sam2pal.errors import SamPalError

    try:
        return {"type": "done", "files": work()}
    except JobCancelled:
        return {"type": "cancelled"}
    except SamPalError as exc:
        return {"type": "error", "message": str(exc)}
    except Exception as exc:  # a job failing in an unforeseen way must not take the worker down
        return {"type": "error", "message": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}


def run_job(spec: JobSpec, emit: Emit, should_stop: Callable[[], bool]) -> dict[str, str]:
    """Run `spec` in this process, reporting through `emit`; return the result files."""
    from sam2pal import api
    from sam2pal.engine.trainer import TrainConfig
    from sam2pal.io.records import OutputOptions
    from sam2pal.io.run_report import run_files
    from sam2pal.model.build import describe

    workdir = Path(spec.workdir)
    if spec.kind == "points":
        return PointsRunner().run(spec)
    emit({"type": "message", "message": "loading templates and model"})
    templates = api.load_templates(spec.templates, spec.template_images)
    model = api.load_model(spec.model, spec.image_size, spec.device)
    emit({"type": "message", "message": f"model: {describe(model)}"})
    if spec.kind == "train":
        adapter_dir = workdir / "adapter"
        labels = None
        if spec.labels is not None:
            from sam2pal.io.labels import load_labels

            labels = load_labels(spec.labels, spec.images, templates.structures)
        result = api.finetune(model, templates, spec.images, adapter_dir, TrainConfig(**spec.train),
                              progress=emit, should_stop=should_stop, labels=labels)
        if should_stop():
            raise JobCancelled()
        emit({"type": "message", "message": f"kept epoch {result.best_epoch}"})
        return {"adapter": str(adapter_dir), "adapter_zip": str(zip_folder(adapter_dir, workdir / "adapter.zip"))}

    out = workdir / "out"

    def predicted(done: int, total: int) -> None:
        emit({"type": "progress", "done": done, "total": total})
        if should_stop():
            raise JobCancelled()

    # the writer's own zip: a correction in the review (io.corrections.replace_mask) keeps it current
    report = api.predict(model, templates, spec.images, out, spec.adapter, spec.batch_size, progress=predicted,
                         options=OutputOptions(zip=True), orientation=spec.orientation, library=spec.library)
    emit({"type": "message", "message": f"{report['n_ok']} segmented, {report['n_failed']} failed"})
    return run_files(out)


class PointsRunner:
    """Runs click jobs, keeping the model loaded and the last images' features encoded.

    A fresh runner per job (what `run_job` does) loads the model and encodes the image every
    click; a worker that keeps one runner answers a second click on the same image with the
    prompt decoder alone, without decoding the photo again.
    """

    def __init__(self, decoder_threads: int | None = None) -> None:
        self._model_key: tuple | None = None
        self._prompter = None
        self._decoder_threads = decoder_threads

    def run(self, spec: JobSpec) -> dict[str, str]:
        """A mask from clicks on the image `spec.images`, saved as workdir/mask.png."""
        import numpy as np
        from PIL import Image

        from sam2pal import api
        from sam2pal.engine.points import PointPrompter
        from sam2pal.io.images import image_size, load_image
        from sam2pal.io.files import atomic_save_image

        model_key = (spec.model, spec.image_size, spec.device)
        if model_key != self._model_key:
            self._prompter = PointPrompter(api.load_model(spec.model, spec.image_size, spec.device),
                                           decoder_threads=self._decoder_threads)
            self._model_key = model_key
        path = Path(spec.images)
        width, height = image_size(path)  # the header names a missing or unreadable file
        key = f"{path}:{path.stat().st_mtime_ns}"  # a replaced file is read and encoded again
        mask = self._prompter.mask([tuple(p) for p in spec.points], (height, width), key, lambda: load_image(path))
        out = Path(spec.workdir) / "mask.png"
        atomic_save_image(out, Image.fromarray(mask.astype(np.uint8) * 255))
        return {"mask": str(out)}


def apply_event(status: JobStatus, event: dict) -> None:
    """Fold one event into a status; every backend uses this so their statuses agree."""
    status.events.append({**event, "time": event.get("time", time.time())})
    kind = event.get("type")
    if kind == "step" and event.get("total_steps"):
        status.progress = event["step"] / event["total_steps"]
        status.message = f"step {event['step']}/{event['total_steps']}, loss {event['loss']:.3f}"
    elif kind == "progress" and event.get("total"):
        status.progress = event["done"] / event["total"]
        status.message = f"{event['done']}/{event['total']} images"
    elif kind in ("message", "warning"):
        status.message = event.get("message", "")
    elif kind == "epoch" and event.get("mean_iou") is not None:
        status.message = f"epoch {event['epoch']}: validation IoU {event['mean_iou']:.3f}"


FINAL_EVENTS = ("done", "error", "cancelled")


def apply_final(status: JobStatus, final: dict | None, exitcode: int | None = None, cancelled: bool = False) -> None:
    """The job's end state from its last event; `final` None means its process died first."""
    if final is None:
        status.state = "failed"
        status.error = (f"the job's worker process ended with exit code {exitcode} "
                        "(out of memory?); try a smaller --image-size or batch size")
    elif final["type"] == "done":
        status.state, status.progress, status.files = "done", 1.0, final["files"]
    elif final["type"] == "cancelled" or cancelled:
        status.state = "cancelled"
    else:
        status.state, status.error = "failed", final["message"]
    status.message = status.error or status.state
