"""`sam2pal bench --ray`: what the Ray path costs per image against plain `predict`, and whether
the driver's memory stays flat as the collection grows.

Same machine, model and synthetic specimens (one in-domain collection, seed 5, 640×480 JPEGs,
copied under distinct names to make large collections). Per-image cost is the steady state:
from the first image written to the last, so Ray's start-up (a few seconds, once per run) is
reported apart. Each run is a fresh process; peak RSS is the driver's own (its workers are
other processes).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from sam2pal.bench import _in_fresh_process, _peak_rss_mb
from sam2pal.engine.qc import QCConfig
from sam2pal.io.images import list_images
from sam2pal.io.templates import load_coco_templates
from sam2pal.model.build import load_model
from sam2pal.synthetic.domains import write_collection


def _copies(source: Path, folder: Path, count: int) -> None:
    """`count` specimens named specimen_000000.jpg…, cycling through the source photos."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = list_images(source)
    for index in range(count):
        shutil.copyfile(photos[index % len(photos)], folder / f"specimen_{index:06d}.jpg")


def _run(model_name: str, image_size: int | None, templates: str, images: str, out: str, batch: int,
         ray: bool, workers: int, queue) -> None:
    from sam2pal.api import predict
    from sam2pal.cluster.ray_predict import RaySettings

    model = load_model(model_name, image_size, "cpu")
    stamps: list[tuple[float, int]] = []
    start = time.perf_counter()
    report = predict(model, load_coco_templates(templates), images, out, batch_size=batch, qc=QCConfig(),
                     progress=lambda done, total: stamps.append((time.perf_counter(), done)),
                     ray=RaySettings(workers=workers) if ray else None)
    total = time.perf_counter() - start
    (t0, n0), (t1, n1) = stamps[0], stamps[-1]
    queue.put({"images": report["n_ok"], "total_s": total, "per_image_s": (t1 - t0) / max(1, n1 - n0),
               "first_result_s": t0 - start, "peak_rss_mb": _peak_rss_mb()})


def run_ray_bench(model: str, image_size: int | None, specimens: int, counts: list[int], batch: int,
                  workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = write_collection(root / "source", "in-domain", seed=5, templates=2, specimens=12)
        _copies(source.specimens, root / "cost", specimens)
        args = (model, image_size, str(source.templates), str(root / "cost"))
        plain = _in_fresh_process(_run, *args, str(root / "plain"), batch, False, workers)
        on_ray = _in_fresh_process(_run, *args, str(root / "ray"), batch, True, workers)
        memory = []
        for count in counts:
            _copies(source.specimens, root / f"n{count}", count)
            memory.append({"images": count, **_in_fresh_process(
                _run, model, image_size, str(source.templates), str(root / f"n{count}"), str(root / f"out{count}"),
                batch, True, workers)})
    _print(model, image_size, batch, workers, plain, on_ray, memory)
    return {"plain": plain, "ray": on_ray, "memory": memory}


def _print(model: str, image_size: int | None, batch: int, workers: int, plain: dict, on_ray: dict,
           memory: list[dict]) -> None:
    print(f"sam2pal bench --ray: {model} at {image_size or 'its own'} px on CPU, QC on, batch {batch}, {workers} "
          f"worker(s), torch {torch.__version__}; synthetic 640x480 specimens")
    print(" | ".join(("path", "images", "s/image (steady)", "overhead", "first result s", "run s", "driver peak RSS MB")))
    for name, row in (("plain", plain), ("ray", on_ray)):
        overhead = f"{row['per_image_s'] / plain['per_image_s'] - 1:+.1%}" if name == "ray" else ""
        print(" | ".join((name, str(row["images"]), f"{row['per_image_s']:.4f}", overhead,
                          f"{row['first_result_s']:.1f}", f"{row['total_s']:.1f}", f"{row['peak_rss_mb']:.0f}")))
    print(" | ".join(("ray, images", "s/image (steady)", "run s", "driver peak RSS MB", "RSS / first")))
    for row in memory:
        print(" | ".join((str(row["images"]), f"{row['per_image_s']:.4f}", f"{row['total_s']:.1f}",
                          f"{row['peak_rss_mb']:.0f}", f"{row['peak_rss_mb'] / memory[0]['peak_rss_mb']:.3f}")))
    sys.stdout.flush()
