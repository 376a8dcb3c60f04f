"""GPU check: every part of `bench/gpu_check.sh` as rows of one markdown table.

Rows: the engine tests on CUDA (read from pytest's JUnit XML), the `sam2pal bench` numbers at the
model size asked (training steps, predict and video-predictor img/s, `--compile`), images/s of the
image encoder alone against whole prediction (target: prediction at least 80% of the encoder), and
peak GPU memory, for random SAM2.1-tiny and -large (no weights can be downloaded on a lent machine;
speed does not depend on the weights). A row that fails says why and the table goes on; rows are
printed as they are measured, so a time limit keeps what was done. Also runs on a CPU
(`--device cpu`) to check the script itself.

    python bench/gpu_check.py --device cuda --image-size 1024 --tests-junit /tmp/engine.xml /tmp/training.xml
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2pal.bench import _in_fresh_process, _one_size  # noqa: E402
from sam2pal.engine.propagate import Propagator  # noqa: E402
from sam2pal.engine.qc import QCConfig  # noqa: E402
from sam2pal.io.images import list_images, load_image  # noqa: E402
from sam2pal.io.templates import load_coco_templates  # noqa: E402
from sam2pal.model.build import load_model  # noqa: E402
from sam2pal.synthetic import write_collection  # noqa: E402

ENCODER_SHARE_TARGET = 0.80


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


def _row(part: str, model: str, result: str, target: str = "", passed: bool | None = None) -> None:
    verdict = "" if passed is None else ("pass" if passed else "FAIL")
    print(f"| {part} | {model} | {result} | {target} | {verdict} |", flush=True)


def tests_row(junit: Path) -> None:
    """One row from pytest's JUnit XML (named after it: engine.xml is 'engine tests'): counts,
    and the first failing tests by name."""
    part = f"{junit.stem} tests on CUDA"
    if not junit.is_file() or junit.stat().st_size == 0:
        _row(part, "random:tiny", "no result: the tests did not finish within their time limit", "none failed", False)
        return
    suite = ElementTree.parse(junit).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    failed = [f"{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    result = f"{total - len(failed) - skipped} passed, {len(failed)} failed, {skipped} skipped"
    _row(part, "random:tiny", result + (f" ({', '.join(failed[:3])})" if failed else ""),
         "none failed", total > skipped and not failed)


def encoder_rows(model_name: str, image_size: int, device: str, batch: int, repeats: int, folder: Path) -> None:
    model = load_model(model_name, image_size, device)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    dtype = str(model.autocast_dtype or torch.float32).replace("torch.", "")
    templates = load_coco_templates(folder / "templates.json")
    images = [load_image(p) for p in list_images(folder / "specimens")][:batch]
    plain = Propagator(model, templates, qc=None)
    with torch.no_grad():
        encoder = _rate(lambda: plain.encoder.encode_images(images), len(images), model.device, repeats)
    predict = _rate(lambda: plain.predict(images), len(images), model.device, repeats)
    checked = _rate(lambda: Propagator(model, templates, qc=QCConfig()).predict(images), len(images), model.device, repeats)
    share = predict / encoder
    _row(f"predict / encoder, {image_size} px {dtype}, batch {batch}", model_name,
         f"{predict:.1f} / {encoder:.1f} img/s = {share:.0%}", f">= {ENCODER_SHARE_TARGET:.0%}",
         share >= ENCODER_SHARE_TARGET)
    _row(f"predict with QC, {image_size} px {dtype}", model_name, f"{checked:.1f} img/s")
    if model.device.type == "cuda":
        _row("peak GPU memory (encoder, predict, QC)", model_name, f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def bench_rows(model_name: str, image_size: int, device: str, compiled: bool) -> None:
    """The `sam2pal bench` row of this model, in its own process as `sam2pal bench` runs it."""
    row = _in_fresh_process(_one_size, model_name, image_size, device, 8, 4, compiled)
    k1, k3 = row["train_k1"], row["train_k3"]
    _row(f"sam2pal bench: palindrome step K=1 / K=3, {image_size} px", model_name,
         f"{k1['step_s']:.3f} / {k3['step_s']:.3f} s on {row['device']}")
    _row("sam2pal bench: predict vs SAM2VideoPredictor", model_name,
         f"{row['predict_ips']:.1f} vs {row['video_predictor_ips']:.1f} img/s", "predict faster",
         row["predict_ips"] > row["video_predictor_ips"])
    if compiled:
        _row("sam2pal bench: predict --compile", model_name, f"{row['compiled_ips']:.1f} img/s")


def _guarded(part: str, model: str, measure, *args) -> None:
    """A failing part is a FAIL row naming the error, and the next part still runs."""
    try:
        measure(*args)
    except Exception as exc:  # any error is the finding: report it and go on
        _row(part, model, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}", "", False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["random:tiny", "random:large"])
    parser.add_argument("--tests-junit", type=Path, nargs="*", default=[],
                        help="pytest --junitxml files of tests run on this device (a row each)")
    parser.add_argument("--no-bench", action="store_true", help="leave out the sam2pal bench rows (quicker)")
    args = parser.parse_args(argv)
    print("| part | model | result | target | verdict |\n|---|---|---|---|---|", flush=True)
    for junit in args.tests_junit:
        _guarded(f"{junit.stem} tests on CUDA", "random:tiny", tests_row, junit)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_collection(folder, templates=1, specimens=args.batch, structures=3, size=(1600, 1200))
        for model in args.models:
            _guarded("predict / encoder", model, encoder_rows, model, args.image_size, args.device, args.batch,
                     args.repeats, folder)
    if not args.no_bench:
        for index, model in enumerate(args.models):
            _guarded("sam2pal bench", model, bench_rows, model, args.image_size, args.device, index == 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
