"""`sam2pal bench --io`: where the time goes on real photo sizes, stage by stage, and peak memory.

Specimens are synthetic (one in-domain collection, seed 7) drawn at 640×480, scaled up to each
size with a little sensor noise and saved as quality-90 JPEGs, as a camera would. Each size runs
in a fresh process, so its peak RSS is its own. Stages are timed one specimen at a time; the
end-to-end column is `sam2pal predict --no-qc` (threads overlapping decode, model and writes).
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam2pal.bench import _in_fresh_process, _peak_rss_mb, _sync
from sam2pal.engine.frames import preprocess
from sam2pal.engine.propagate import Decoding, Propagator, load_specimen, segment_groups
from sam2pal.engine.qc import QCConfig, assess, round_trip_iou
from sam2pal.engine.upsample import box_masks
from sam2pal.io.images import list_images
from sam2pal.io.outputs import check_coco_file
from sam2pal.io.records import OutputOptions, mask_annotation, mask_png
from sam2pal.io.overlays import overlay
from sam2pal.io.templates import load_coco_templates
from sam2pal.model.build import load_model
from sam2pal.synthetic.domains import write_collection

STAGES = ("decode", "resize", "model", "qc", "upsample", "rle", "png", "overlay", "coco_check")
_MODEL_STAGES = ("model", "qc")
_ASPECT = 3 / 2


def photo_size(megapixels: float) -> tuple[int, int]:
    """(width, height) of a 3:2 photo of about this many megapixels; 0.3 MP is 640×480 (4:3)."""
    if megapixels <= 0.31:
        return 640, 480
    height = round((megapixels * 1e6 / _ASPECT) ** 0.5)
    return round(height * _ASPECT), height


def write_photos(source: Path, folder: Path, size: tuple[int, int], seed: int = 7) -> None:
    """The source specimens scaled to `size`, with noise (so JPEG decoding costs what a photo's does)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for path in list_images(source):
        image = np.asarray(Image.open(path).convert("RGB").resize(size, Image.BICUBIC), dtype=np.int16)
        noise = rng.normal(0, 3, size=(size[1], size[0], 1)).astype(np.int16)
        Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8)).save(folder / path.name, quality=90)


def _stage_run(model_name: str, image_size: int | None, device: str, folder: str, templates: str, queue) -> None:
    """Every stage of one specimen at a time, the way `predict` chains them."""
    model = load_model(model_name, image_size, device)
    template_set = load_coco_templates(templates)
    propagator = Propagator(model, template_set, qc=QCConfig())
    encoder = propagator.encoder
    count = len(template_set.structures)
    paths = list_images(folder)
    totals = dict.fromkeys(STAGES, 0.0)
    annotations, images = [], []
    for index, path in enumerate([paths[0], *paths]):  # the first pass warms up and is not counted
        times: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            times[stage] = now - clock
            clock = now

        loaded = load_specimen(path, Decoding(model.image_size, OutputOptions().overlay_size))
        photo = loaded.photo
        lap("decode")
        pixels = preprocess(photo.image, model.image_size)[None]
        lap("resize")
        with torch.no_grad():
            frame = encoder.encode(pixels)
            output = segment_groups(encoder, frame, propagator.memories, propagator.groups, count)
            _sync(model.device)
            lap("model")
            trip = round_trip_iou(encoder, frame, output, propagator.truths, count)
            assess(output, trip, propagator.truths, count, propagator.qc)
            _sync(model.device)
            lap("qc")
        boxes = box_masks(output.low_res_logits, *photo.full_shape)
        lap("upsample")
        found = [mask_annotation(k + 1, box) for k, box in enumerate(boxes) if box.area()]
        lap("rle")
        for box in boxes:
            mask_png(box)
        lap("png")
        background = loaded.review() if loaded.review is not None else photo.image  # the writer's second read
        lap("review")
        times["decode"] += times.pop("review")
        overlay(image=background, masks=boxes, names=template_set.structures,
                long_side=OutputOptions().overlay_size).save(io.BytesIO(), format="JPEG", quality=90)
        lap("overlay")
        if index:
            for stage in STAGES[:-1]:
                totals[stage] += times[stage]
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": path.name, "width": photo.size[0], "height": photo.size[1]})
            annotations += [{**a, "id": len(annotations) + i + 1, "image_id": image_id} for i, a in enumerate(found)]
    coco = Path(folder).parent / f"{Path(folder).name}_check.json"
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(template_set.structures)]
    coco.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    start = time.perf_counter()
    check_coco_file(coco)
    totals["coco_check"] = time.perf_counter() - start
    queue.put({"stages": {k: v / len(paths) for k, v in totals.items()}, "peak_rss_mb": _peak_rss_mb(),
               "structures": count, "device": str(model.device)})


def _end_to_end(model_name: str, image_size: int | None, device: str, folder: str, templates: str, batch: int,
                out: str, queue) -> None:
    from sam2pal.api import predict

    model = load_model(model_name, image_size, device)
    template_set = load_coco_templates(templates)
    paths = list_images(folder)
    # a discarded run first: PyTorch's first calls and the kernel check of upsampling cost
    # the same at every photo size and would flatter the ratio between sizes
    predict(model, template_set, paths[:batch], f"{out}_warm-up", batch_size=batch, qc=None,
            options=OutputOptions(overwrite=True))
    start = time.perf_counter()
    report = predict(model, template_set, paths, out, batch_size=batch, qc=None,
                     options=OutputOptions(overwrite=True))
    seconds = time.perf_counter() - start
    queue.put({"seconds": seconds / len(paths), "ok": report["n_ok"], "peak_rss_mb": _peak_rss_mb()})


def run_io(model: str, image_size: int | None, device: str, specimens: int, megapixels: list[float],
           batches: list[int]) -> dict:
    """Measure every size in fresh processes and print the tables; the numbers are returned too."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = write_collection(root / "source", "in-domain", seed=7, templates=1, specimens=specimens)
        rows = []
        for mp in megapixels:
            size = photo_size(mp)
            folder = root / f"{mp:g}mp"
            write_photos(source.specimens, folder, size)
            row = {"megapixels": mp, "size": size, **_in_fresh_process(
                _stage_run, model, image_size, device, str(folder), str(source.templates))}
            row["end_to_end"] = _in_fresh_process(_end_to_end, model, image_size, device, str(folder),
                                                  str(source.templates), batches[0], str(root / "out"))
            row["by_batch"] = {b: _in_fresh_process(_end_to_end, model, image_size, device, str(folder),
                                                    str(source.templates), b, str(root / "out"))["peak_rss_mb"]
                               for b in batches[1:]}
            rows.append(row)
    _print(model, image_size, specimens, batches, rows)
    return {"rows": rows}


def _print(model: str, image_size: int | None, specimens: int, batches: list[int], rows: list[dict]) -> None:
    print(f"sam2pal bench --io: {model} at {image_size or 'its own'} px on {rows[0]['device']}, "
          f"{rows[0]['structures']} structures, {specimens} synthetic specimens per size (seed 7), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds per specimen")
    header = ["photo", *STAGES, "outside model", f"predict (batch {batches[0]})", "× 0.3 MP", "stage RSS MB",
              "predict RSS MB", *[f"RSS batch {b}" for b in batches[1:]]]
    print(" | ".join(header))
    first = rows[0]["end_to_end"]["seconds"]
    for r in rows:
        stages = r["stages"]
        outside = sum(v for k, v in stages.items() if k not in _MODEL_STAGES)
        e2e = r["end_to_end"]
        cells = [f"{r['megapixels']:g} MP {r['size'][0]}x{r['size'][1]}", *[f"{stages[s]:.3f}" for s in STAGES],
                 f"{outside:.3f}", f"{e2e['seconds']:.3f}", f"{e2e['seconds'] / first:.2f}",
                 f"{r['peak_rss_mb']:.0f}", f"{e2e['peak_rss_mb']:.0f}",
                 *[f"{r['by_batch'][b]:.0f}" for b in batches[1:]]]
        print(" | ".join(cells))
    print("stages: one specimen at a time (decode: JPEG at its DCT scale, at the model's scale and, above 2048 px, "
          "again at the review size for the overlay; resize: to the model's input; model: encoder + memory "
          "attention + decoder; qc: the round trip; upsample: full-size masks inside each box; rle: COCO "
          "annotation; png: 1-bit mask files; overlay: at 2048 px, JPEG-encoded; coco_check: pycocotools reload). outside model: every stage but model and qc. predict: the whole "
          "`sam2pal predict --no-qc` run per specimen, decode and writes overlapping the model.")
    sys.stdout.flush()
