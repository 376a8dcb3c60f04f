"""GPU check, part 2: images/s of the image encoder alone against whole prediction, and peak GPU
memory, for random SAM2.1-tiny and -large (no weights can be downloaded on a lent machine; speed
does not depend on the weights). One markdown table. Also runs on a CPU (`--device cpu`) to check
the script itself.

    python bench/gpu_check.py --device cuda --image-size 1024
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2pal.engine.propagate import Propagator  # noqa: E402
from sam2pal.engine.qc import QCConfig  # noqa: E402
from sam2pal.io.images import list_images, load_image  # noqa: E402
from sam2pal.io.templates import load_coco_templates  # noqa: E402
from sam2pal.model.build import load_model  # noqa: E402
from sam2pal.synthetic import write_collection  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(step, count: int, device: torch.device, repeats: int) -> float:
    step()  # warm-up: kernels chosen, memory pools filled
    _sync(device)
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return count * repeats / (time.perf_counter() - began)


def measure(model_name: str, image_size: int, device: str, batch: int, repeats: int, folder: Path) -> dict:
    model = load_model(model_name, image_size, device)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    templates = load_coco_templates(folder / "templates.json")
    images = [load_image(p) for p in list_images(folder / "specimens")][:batch]
    plain = Propagator(model, templates, qc=None)
    checked = Propagator(model, templates, qc=QCConfig())
    with torch.no_grad():
        encoder = _rate(lambda: plain.encoder.encode_images(images), len(images), model.device, repeats)
    predict = _rate(lambda: plain.predict(images), len(images), model.device, repeats)
    with_qc = _rate(lambda: checked.predict(images), len(images), model.device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if model.device.type == "cuda" else float("nan")
    return {"model": model_name, "encoder": encoder, "predict": predict, "qc": with_qc, "peak_gb": peak,
            "dtype": str(model.autocast_dtype or torch.float32).replace("torch.", "")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["random:tiny", "random:large"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_collection(folder, templates=1, specimens=args.batch, structures=3, size=(1600, 1200))
        rows = [measure(m, args.image_size, args.device, args.batch, args.repeats, folder) for m in args.models]
    print(f"| model | {args.image_size} px, dtype | encoder img/s | predict img/s (no QC) | predict / encoder | "
          f"with QC img/s | peak GPU GiB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['dtype']} | {row['encoder']:.1f} | {row['predict']:.1f} | "
              f"{row['predict'] / row['encoder']:.0%} | {row['qc']:.1f} | {row['peak_gb']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
