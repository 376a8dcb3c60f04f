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
from typing import Callable

from sam2pal import __version__
from sam2pal.engine.propagate import Propagator, predict_collection
from sam2pal.engine.trainer import Trainer, TrainConfig, TrainResult
from sam2pal.errors import SamPalError
from sam2pal.io.images import DEFAULT_MAX_PIXELS, list_images
from sam2pal.io.outputs import PredictionWriter
from sam2pal.io.templates import TemplateSet, load_coco_templates, load_mask_templates
from sam2pal.model.adapters import load_adapter, load_weights, read_adapter_config
from sam2pal.model.build import LoadedModel, load_model

__all__ = ["load_model", "load_templates", "load_adapter", "finetune", "predict", "TrainConfig"]


def load_templates(
    coco_json: str | Path | None = None,
    template_images: str | Path | None = None,
    image: str | Path | None = None,
    masks: dict[str, str | Path] | None = None,
) -> TemplateSet:
    """Templates from a COCO file, or from one image plus one mask PNG per structure."""
    if coco_json is not None:
        if image is not None or masks:
            raise SamPalError("give either --templates T.json or --template-image with --mask NAME=PATH, not both")
        return load_coco_templates(coco_json, template_images)
    if image is not None and masks:
        return load_mask_templates(image, masks)
    raise SamPalError("no templates: pass --templates T.json, or --template-image IMG with --mask NAME=PATH per structure")


def merge_templates(first: TemplateSet, second: TemplateSet) -> TemplateSet:
    """Templates of both sets; structures matched by name, new ones appended (SAM2-PAL's
    `--training_json` adds annotated images for fine-tuning this way)."""
    structures = list(first.structures) + [s for s in second.structures if s not in first.structures]
    names = {t.name for t in first.templates}
    extra = [t for t in second.templates if t.name not in names]
    return TemplateSet(structures, list(first.templates) + extra)


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
) -> TrainResult:
    """Palindrome fine-tuning; on return `model` carries the adapter that validation kept."""
    trainer = Trainer(model, templates, _paths(images), Path(out_dir), config or TrainConfig(), resume, progress, should_stop)
    result = trainer.run()
    load_weights(model.sam, result.adapter_dir)
    model.sam.requires_grad_(False)
    model.adapter_dir = result.adapter_dir
    return result


def provenance(model: LoadedModel, templates: TemplateSet, **params) -> dict:
    """What a result file must say about how it was made, so it can be reproduced or questioned."""
    adapter = None
    if model.adapter_dir is not None:
        adapter = {"path": str(model.adapter_dir), **asdict(read_adapter_config(model.adapter_dir))}
    return {
        "description": "sam2pal predictions",
        "version": __version__,
        "year": _dt.date.today().year,
        "model": model.name,
        "model_variant": model.variant,
        "untrained_model": model.untrained,
        "checkpoint_sha256": model.checkpoint_sha256,
        "adapter": adapter,
        "templates": [t.name for t in templates.templates],
        "structures": list(templates.structures),
        "parameters": {"image_size": model.image_size, "device": str(model.device), **params},
    }


def predict(
    model: LoadedModel,
    templates: TemplateSet,
    images: str | Path | list[Path],
    out_dir: str | Path,
    adapter: str | Path | None = None,
    batch_size: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Propagate every structure to every image; write OUT (COCO, masks, overlays, report)."""
    if batch_size < 1:
        raise SamPalError(f"--batch-size {batch_size} must be at least 1")
    paths = _paths(images)
    if adapter is not None:
        load_adapter(model, adapter)
    info = provenance(model, templates, batch_size=batch_size)
    writer = PredictionWriter(out_dir, list(templates.structures), info)
    propagator = Propagator(model, templates)
    predict_collection(propagator, paths, writer, batch_size, max_pixels, progress)
    return writer.close()
