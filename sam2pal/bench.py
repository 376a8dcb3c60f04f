"""`sam2pal bench`: training and prediction speed on this machine, printed as one table.

Each image size runs in its own process so that its peak RSS is its own. Numbers only: the
weights are random (quality means nothing here), the data is synthetic.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sam2pal.engine.propagate import Propagator
from sam2pal.engine.trainer import LOG_NAME, VALIDATION_NAME, TrainConfig, Trainer
from sam2pal.io.images import list_images, load_image
from sam2pal.io.templates import load_coco_templates
from sam2pal.model.build import compile_model, config_file, load_model
from sam2pal.synthetic import write_collection

_SIZE = (640, 480)


def _train_timing(model_name: str, image_size: int, device: str, folder: Path, steps: int) -> dict:
    """Two epochs over `steps` specimens: the first encodes each specimen, the second reads the cache."""
    model = load_model(model_name, image_size, device)
    templates = load_coco_templates(folder / "templates.json")
    out = folder / f"adapter_{len(templates.structures)}"
    Trainer(model, templates, list_images(folder / "specimens")[:steps], out, TrainConfig(epochs=2)).run()
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    epochs = json.loads((out / VALIDATION_NAME).read_text())["epochs"]
    later_steps = [e["seconds"] for e in log if e.get("epoch") == 2 and "step" in e]
    return {"step_s": float(np.median(later_steps)), "epoch1_s": epochs[1]["seconds"], "epoch2_s": epochs[2]["seconds"]}


def _predict_timing(model_name: str, image_size: int, device: str, folder: Path, count: int, batch: int,
                    compiled: bool = False) -> float:
    model = load_model(model_name, image_size, device)
    if compiled:
        compile_model(model)
    propagator = Propagator(model, load_coco_templates(folder / "templates.json"))
    images = [load_image(p) for p in list_images(folder / "specimens")[:count]]
    propagator.predict(images[:batch])  # warm-up (and compilation) at the batch shape timed
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        propagator.predict(images[i : i + batch])
    _sync(model.device)
    return len(images) / (time.perf_counter() - start)


def _video_predictor_timing(model_name: str, image_size: int, device: str, folder: Path, count: int) -> float:
    """Meta's SAM2VideoPredictor, one two-frame video (template, specimen) per specimen."""
    from PIL import Image
    from sam2.build_sam import build_sam2_video_predictor

    model = load_model(model_name, image_size, device)
    checkpoint = folder / "bench_checkpoint.pt"
    torch.save({"model": model.sam.state_dict()}, checkpoint)
    side = image_size // 16
    predictor = build_sam2_video_predictor(
        config_file(model.variant), str(checkpoint), device=str(model.device),
        hydra_overrides_extra=[
            f"++model.image_size={image_size}",
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{side},{side}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{side},{side}]",
        ],
    )
    templates = load_coco_templates(folder / "templates.json")
    template = templates.templates[0]
    videos = []
    for i, path in enumerate(list_images(folder / "specimens")[:count]):
        video = folder / f"video_{i}"
        video.mkdir()
        Image.fromarray(template.image).save(video / "00000.jpg", quality=95)
        Image.fromarray(load_image(path)).save(video / "00001.jpg", quality=95)
        videos.append(video)
    start = time.perf_counter()
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=model.device.type == "cuda"):
        for video in videos:
            state = predictor.init_state(str(video))
            for obj_id, mask in enumerate(templates.mask_stack(0)):
                predictor.add_new_mask(state, 0, obj_id, mask)
            for _ in predictor.propagate_in_video(state):
                pass
    _sync(model.device)
    return len(videos) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Linux keeps ru_maxrss across fork and exec, so a spawned
    child would report its parent's peak; /proc's VmHWM belongs to the child's address space."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_size(model_name: str, image_size: int, device: str, specimens: int, steps: int, compiled: bool,
              queue) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        row: dict = {"image_size": image_size}
        # a discarded run first: the process's one-time costs (thread pools, kernel selection,
        # heap growth) would otherwise land in the first epoch of whichever K runs first
        write_collection(Path(tmp) / "warm-up", templates=1, specimens=2, structures=1, size=_SIZE)
        _train_timing(model_name, image_size, device, Path(tmp) / "warm-up", 2)
        for k in (1, 3):
            folder = Path(tmp) / f"k{k}"
            write_collection(folder, templates=1, specimens=max(specimens, steps), structures=k, size=_SIZE)
            row[f"train_k{k}"] = _train_timing(model_name, image_size, device, folder, steps)
        folder = Path(tmp) / "k3"
        row["predict_ips"] = _predict_timing(model_name, image_size, device, folder, specimens, batch=4)
        if compiled:
            row["compiled_ips"] = _predict_timing(model_name, image_size, device, folder, specimens, 4, compiled=True)
        row["video_predictor_ips"] = _video_predictor_timing(model_name, image_size, device, folder, specimens)
        row["device"] = str(load_model(model_name, 64, device).device)
        row["peak_rss_mb"] = _peak_rss_mb()
    queue.put(row)


def _quietly(target, *args) -> None:
    """In the child: no progress bars between the table's lines."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    target(*args)


def _in_fresh_process(target, *args) -> dict:
    """Run `target(*args, queue)` in a spawned process, so its peak RSS is its own; its row back."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_quietly, args=(target, *args, queue))
    process.start()
    row = queue.get()
    process.join()
    return row


def run_bench(model: str, sizes: list[int], device: str, specimens: int, steps: int,
              compiled: bool = False) -> list[dict]:
    """Measure every size in a fresh process and print the table."""
    rows = [_in_fresh_process(_one_size, model, size, device, specimens, steps, compiled) for size in sizes]
    _print(model, rows)
    return rows


def _scale_run(model_name: str, image_size: int, device: str, folder: str, count: int, queue) -> None:
    """`sam2pal predict` on the first `count` specimens (QC on, as by default), in its own process."""
    from sam2pal.api import predict

    model = load_model(model_name, image_size, device)
    templates = load_coco_templates(Path(folder) / "templates.json")
    paths = list_images(Path(folder) / "specimens")[:count]
    start = time.perf_counter()
    report = predict(model, templates, paths, Path(folder) / f"out_{count}")
    seconds = time.perf_counter() - start
    queue.put({"specimens": count, "ok": report["n_ok"], "seconds": seconds, "peak_rss_mb": _peak_rss_mb()})


def run_scale(model: str, image_size: int, device: str, counts: list[int]) -> list[dict]:
    """Peak RSS of whole prediction runs over growing collections: it must not grow with them."""
    with tempfile.TemporaryDirectory() as tmp:
        write_collection(tmp, templates=1, specimens=max(counts), structures=3, size=_SIZE)
        rows = [_in_fresh_process(_scale_run, model, image_size, device, tmp, count) for count in counts]
    print(f"sam2pal bench --scale: {model} (UNTRAINED weights), {image_size} px, synthetic {_SIZE[0]}x{_SIZE[1]} "
          f"specimens, 3 structures, QC on, batch 4, each run in a fresh process")
    print(" | ".join(("specimens", "written", "seconds", "img/s", "peak RSS MB", "RSS / first")))
    for r in rows:
        print(" | ".join([str(r["specimens"]), str(r["ok"]), f"{r['seconds']:.1f}", f"{r['ok'] / r['seconds']:.2f}",
                          f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}"]))
    sys.stdout.flush()
    return rows


def _print(model: str, rows: list[dict]) -> None:
    print(f"sam2pal bench: {model} (UNTRAINED weights), synthetic {_SIZE[0]}x{_SIZE[1]} specimens, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = ("size", "device", "K=1 step s", "K=3 step s", "K3/K1", "K3/K1 epoch1", "K=1 e1/e2", "K=3 e1/e2",
              "predict img/s", "videopred img/s", "speedup", "peak RSS MB")
    if any("compiled_ips" in r for r in rows):
        header += ("--compile img/s",)
    print(" | ".join(header))
    for r in rows:
        k1, k3 = r["train_k1"], r["train_k3"]
        print(" | ".join([
            str(r["image_size"]), r["device"], f"{k1['step_s']:.3f}", f"{k3['step_s']:.3f}",
            f"{k3['step_s'] / k1['step_s']:.2f}", f"{k3['epoch1_s'] / k1['epoch1_s']:.2f}",
            f"{k1['epoch1_s'] / k1['epoch2_s']:.2f}", f"{k3['epoch1_s'] / k3['epoch2_s']:.2f}", f"{r['predict_ips']:.2f}", f"{r['video_predictor_ips']:.2f}",
            f"{r['predict_ips'] / r['video_predictor_ips']:.2f}", f"{r['peak_rss_mb']:.0f}",
        ] + ([f"{r['compiled_ips']:.2f}"] if "compiled_ips" in r else [])))
    print("step s: one palindrome step with cached features (median of epoch 2); K3/K1 epoch1: the same "
          "ratio for first-epoch wall time, where each step also encodes its specimen; e1/e2: epoch wall "
          "time, first (encodes every specimen) over second (feature cache); predict: K=3, batch 4, "
          "template memory reused; videopred: SAM2VideoPredictor, one 2-frame video per specimen; --compile: "
          "predict with the image encoder compiled, after a warm-up batch that compiles it.")
    sys.stdout.flush()
