"""The small public API that the CLI and the web app both call.

    import sam2pal
    model = sam2pal.load_model("tiny", image_size=1024)
    templates = sam2pal.load_templates("templates.json")
    sam2pal.finetune(model, templates, "specimens/", "adapter/")      # optional
    report = sam2pal.predict(model, templates, "specimens/", "out/")
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sam2pal import __version__
from sam2pal.engine.propagate import Decoding, Propagator, predict_collection
from sam2pal.engine.qc import QCConfig
from sam2pal.engine.routing import library_identity, predict_with_library
from sam2pal.engine.trainer import Trainer, TrainConfig, TrainResult
from sam2pal.errors import SamPalError
from sam2pal.io.images import DEFAULT_MAX_PIXELS, list_images, scan_images
from sam2pal.io.outputs import PredictionWriter
from sam2pal.io.records import OutputOptions
from sam2pal.io.templates import TemplateSet, load_templates
from sam2pal.model.adapters import WEIGHTS_NAME, load_adapter, load_weights, read_adapter_config
from sam2pal.model.build import LoadedModel, describe, file_sha256, load_model
from sam2pal.model.library import AdapterLibrary

if TYPE_CHECKING:
    from sam2pal.cluster.ray_predict import RaySettings

__all__ = ["load_model", "load_templates", "load_adapter", "finetune", "predict", "TrainConfig"]


def merge_templates(first: TemplateSet, second: TemplateSet) -> TemplateSet:
    """Templates of both sets; structures matched by name, new ones appended (SAM2-PAL's
    `--training_json` adds annotated images for fine-tuning this way)."""
    structures = list(first.structures) + [s for s in second.structures if s not in first.structures]
    names = {t.name for t in first.templates}
    extra = [t for t in second.templates if t.name not in names]
    return TemplateSet(structures, list(first.templates) + extra, first.warnings + second.warnings)


def _paths(images: str | Path | list[Path]) -> list[Path]:
    return [Path(p) for p in images] if isinstance(images, list) else list_images(images)


def finetune(
    model: LoadedModel,
    templates: TemplateSet,
    images: str | Path | list[Path],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    resume: str | Path | None = None,
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    labels: TemplateSet | None = None,
) -> TrainResult:
    """Palindrome fine-tuning, plus supervised steps on `labels` (`io.labels.load_labels`) when
    given; on return `model` carries the adapter that validation kept."""
    trainer = Trainer(model, templates, _paths(images), Path(out_dir), config or TrainConfig(), resume, progress,
                      should_stop, labels)
    result = trainer.run()
    load_weights(model.sam, result.adapter_dir)
    model.sam.requires_grad_(False)
    model.adapter_dir = result.adapter_dir
    return result


def provenance(model: LoadedModel, templates: TemplateSet, **params) -> dict:
    """What a result file must say about how it was made, so it can be reproduced or questioned."""
    adapter = None
    if model.adapter_dir is not None:
        adapter = {
            "path": str(model.adapter_dir),
            "sha256": file_sha256(Path(model.adapter_dir) / WEIGHTS_NAME),
            **asdict(read_adapter_config(model.adapter_dir)),
        }
    return {
        "description": "sam2pal predictions",
        "version": __version__,
        "year": _dt.date.today().year,
        "model": model.name,
        "model_variant": model.variant,
        "untrained_model": model.untrained,
        "model_description": describe(model),
        "trained_on": "untrained random weights" if model.untrained else model.trained_on,
        "checkpoint_sha256": model.checkpoint_sha256,
        "model_fingerprint": model.fingerprint,
        "adapter": adapter,
        "templates": [t.name for t in templates.templates],
        "templates_sha256": templates.fingerprint(),
        "structures": list(templates.structures),
        "parameters": {"image_size": model.image_size, "device": str(model.device), **params},
    }


# Settings that change how a run goes or what it writes, but not a mask: a run into the same OUT
# may differ in these and still complete the earlier one. (`masks`, png or none, is not among
# them: completing a run must not leave some images with PNGs and others without.)
_NOT_IN_MASKS = frozenset({"device", "batch_size", "max_pixels", "polygons", "images", "qc", "adapter_library_folder"})


def _result_identity(info: dict) -> dict:
    """The part of the provenance that two runs must share for their results to be merged."""
    identity = {
        key: value
        for key, value in info.items()
        if key not in ("description", "version", "year", "parameters", "model_description")
    }
    if identity["adapter"] is not None:
        identity["adapter"] = {key: value for key, value in identity["adapter"].items() if key != "path"}
    identity["parameters"] = {key: value for key, value in info["parameters"].items() if key not in _NOT_IN_MASKS}
    return identity


def predict(
    model: LoadedModel,
    templates: TemplateSet,
    images: str | Path | list[Path],
    out_dir: str | Path,
    adapter: str | Path | None = None,
    batch_size: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
    options: OutputOptions | None = None,
    qc: QCConfig | None = QCConfig(),
    orientation: str = "none",
    ray: "RaySettings | None" = None,
    library: str | Path | None = None,
    min_confidence: float = 0.5,
) -> dict:
    """Propagate every structure to every image; write OUT (COCO, masks, overlays, report).

    An earlier run into out_dir is completed, not repeated: images it segmented are kept as they
    are (unless options.overwrite). Files in the folder that are not images are listed in the
    report as skipped. With `ray`, the images go through a pool of Ray actors
    (`cluster.ray_predict`); the outputs are the same. With `library` (an adapter library
    folder) each image is segmented by the adapter the selector picks for it
    (`engine.routing`); below `min_confidence` by the base model, and flagged.
    """
    if batch_size < 1:
        raise SamPalError(f"--batch-size {batch_size} must be at least 1")
    if max_pixels < 1:
        raise SamPalError(f"--max-pixels {max_pixels} must be at least 1")
    options = options or OutputOptions()
    # overlay_size is part of what makes the masks: photos are decoded at the larger of the
    # model's input and the overlay (io.images.load_photo)
    params: dict = {"batch_size": batch_size, "max_pixels": max_pixels, "polygons": options.polygons,
                    "masks": options.masks, "overlay_size": options.overlay_size,
                    "orientation_search": orientation, "qc": asdict(qc) if qc is not None else None}
    if isinstance(images, list):
        paths, skipped = [Path(p) for p in images], []
    else:
        folder = scan_images(images)
        paths, skipped = folder.require_images(), folder.skipped
        params["images"] = str(images)
    if adapter is not None:
        load_adapter(model, adapter)
    routed = None
    if library is not None:
        if model.adapter_dir is not None or ray is not None:
            raise SamPalError("--adapters picks an adapter per image: pass it without --adapter and --ray")
        routed = AdapterLibrary(library)
        params["adapter_library"] = library_identity(routed, model, min_confidence)
        params["adapter_library_folder"] = str(library)
    info = provenance(model, templates, **params)
    writer = PredictionWriter(out_dir, list(templates.structures), info, _result_identity(info), options)
    for entry in skipped:
        writer.add_note(entry.path, entry.reason)
    todo = [path for path in paths if not writer.is_done(path)]
    decoding = Decoding(model.image_size, options.overlay_size, max_pixels)
    if todo and ray is not None:
        from sam2pal.cluster.ray_predict import WorkerSpec, predict_on_ray

        spec = WorkerSpec(model.name, model.image_size, model.fingerprint,
                          None if model.adapter_dir is None else str(Path(model.adapter_dir).resolve()),
                          templates, str(Path(out_dir).resolve()), options, qc, orientation, decoding)
        predict_on_ray(spec, writer, todo, batch_size, ray, progress)
    elif todo and routed is not None:
        predict_with_library(model, templates, routed, todo, writer, batch_size, decoding, min_confidence, qc,
                             orientation, progress)
    elif todo:
        propagator = Propagator(model, templates, qc=qc, orientation=orientation)
        predict_collection(propagator, todo, writer, batch_size, decoding, progress)
    return writer.close()
