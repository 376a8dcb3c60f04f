"""`predict --ray`: a local Ray (2 CPUs) gives the plain path's outputs, survives a killed worker,
completes a stopped run and reports a file it cannot read."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from sam2pal.cli import main
from sam2pal.synthetic.domains import write_collection

ray = pytest.importorskip("ray")

ARGS = ["--model", "synthetic:256", "--device", "cpu", "--quiet", "--batch-size", "2"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return write_collection(tmp_path_factory.mktemp("ray") / "c", "in-domain", seed=11, templates=2, specimens=8)


def _predict(files, out: Path, *extra: str, model: list[str] = ARGS) -> int:
    return main(["predict", "--templates", str(files.templates), "--images", str(files.specimens),
                 "--out", str(out), *model, *extra])


def _masks(out: Path) -> dict[str, list]:
    coco = json.loads((out / "predictions.json").read_text())
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    found: dict[str, list] = {}
    for annotation in coco["annotations"]:
        found.setdefault(names[annotation["image_id"]], []).append(
            (annotation["category_id"], annotation["segmentation"]["counts"], annotation.get("qc_round_trip_iou")))
    return found


def test_ray_gives_the_plain_path_masks_files_and_report(local_ray, collection, tmp_path):
    assert _predict(collection, tmp_path / "plain") == 0
    assert _predict(collection, tmp_path / "ray", "--ray", "--ray-workers", "1", "--cpus-per-worker", "1") == 0

    assert _masks(tmp_path / "ray") == _masks(tmp_path / "plain") and len(_masks(tmp_path / "plain")) == 8
    plain = sorted(p.relative_to(tmp_path / "plain").as_posix() for p in (tmp_path / "plain").rglob("*.png"))
    on_ray = sorted(p.relative_to(tmp_path / "ray").as_posix() for p in (tmp_path / "ray").rglob("*.png"))
    assert on_ray == plain
    for name in plain:  # the same pixels (ISA-L's deflate stream itself may differ from run to run)
        ray_png, plain_png = (Image.open(tmp_path / side / name) for side in ("ray", "plain"))
        assert ray_png.mode == plain_png.mode == "1"
        assert np.array_equal(np.asarray(ray_png), np.asarray(plain_png))
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert report["n_ok"] == 8 and report["n_from_earlier_runs"] == 0
    assert [entry["file"] for entry in report["images"]] == sorted(p.name for p in collection.specimens.iterdir())


def _worker_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("MapWorker(MapBatches(PredictWorker))" in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_a_killed_worker_has_its_images_retried_and_each_image_appears_once(local_ray, collection, tmp_path):
    out = tmp_path / "out"
    codes: list[int] = []
    slow = ["--model", "random:tiny", "--image-size", "256", "--device", "cpu", "--quiet", "--batch-size", "1"]
    thread = threading.Thread(target=lambda: codes.append(
        _predict(collection, out, "--ray", "--cpus-per-worker", "1", model=slow)))
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any((out / ".records").glob("specimen_*.json")):
        time.sleep(0.05)
    workers = _worker_processes()
    assert workers, "no Ray worker running the model was found"
    for process in workers:
        os.kill(process.pid, signal.SIGKILL)
    written_before = len(list((out / ".records").glob("specimen_*.json")))
    thread.join(timeout=300)

    assert 1 <= written_before < 8  # killed mid-run (about 0.4 s per image at batch 1)
    assert codes == [0]
    report = json.loads((out / "report.json").read_text())
    assert report["n_ok"] == 8 and len(report["images"]) == 8
    coco = json.loads((out / "predictions.json").read_text())
    assert sorted(image["file_name"] for image in coco["images"]) == sorted(p.name for p in collection.specimens.iterdir())
    assert len({(a["image_id"], a["category_id"]) for a in coco["annotations"]}) == len(coco["annotations"])


def test_a_stopped_run_completes_with_the_same_command_and_a_bad_file_is_reported(local_ray, collection, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(collection.specimens.iterdir())[:4]:
        (images / path.name).write_bytes(path.read_bytes())
    args = ["predict", "--templates", str(collection.templates), "--images", str(images), "--out", str(tmp_path / "out"),
            *ARGS, "--ray", "--cpus-per-worker", "1"]
    assert main(args) == 0  # the first half: as if the run had stopped here
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / ".records").glob("specimen_*.json")}
    for path in sorted(collection.specimens.iterdir())[4:]:
        (images / path.name).write_bytes(path.read_bytes())
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(images / "broken.jpg")
    (images / "broken.jpg").write_bytes((images / "broken.jpg").read_bytes()[:40])

    assert main(args) == 1  # one image failed, the others are written

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n_ok"] == 8 and report["n_from_earlier_runs"] == 4 and report["n_failed"] == 1
    (failed,) = [entry for entry in report["images"] if entry["status"] == "failed"]
    assert failed["file"] == "broken.jpg" and "broken.jpg" in failed["error"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / ".records").glob("specimen_*.json")
            if p.name in first} == first  # the first half was not predicted again
