"""The ray backend: the web app's jobs on a Ray cluster (a local one with 2 CPUs here)."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from backends import get_backend
from sam2pal.jobs import JobSpec

from conftest import IMAGE_SIZE

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def backend():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    cluster = get_backend("ray")
    yield cluster
    cluster.close()
    ray.shutdown()


def _spec(collection, tmp_path, kind="predict", **extra) -> JobSpec:
    return JobSpec(kind=kind, workdir=str(tmp_path / kind), templates=str(collection / "templates.json"),
                   images=str(collection / "specimens"), model="random:tiny", image_size=IMAGE_SIZE,
                   device="cpu", **extra)


def test_a_job_runs_on_the_cluster_and_its_files_come_back(backend, collection, tmp_path):
    status = backend.wait(backend.start(_spec(collection, tmp_path)), timeout=300)

    assert status.state == "done", status.error
    assert any(event["type"] == "progress" for event in status.events)
    report = json.loads(open(status.files["report"]).read())
    assert report["n_ok"] == 3
    assert status.files["predictions"].startswith(str(tmp_path / "predict"))  # unpacked into the workdir
    assert sorted(p.name for p in (tmp_path / "predict" / "work" / "out" / "overlays").iterdir()) == \
        sorted(f"{p.stem}.jpg" for p in (collection / "specimens").iterdir())
    assert "Ray cluster" in backend.describe()


def test_a_worker_killed_on_the_cluster_is_a_failed_job_and_the_app_goes_on(backend, collection, tmp_path):
    doomed = backend.start(_spec(collection, tmp_path, kind="train", train={"epochs": 50}))
    deadline = time.monotonic() + 120
    while backend.status(doomed).state != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    (worker,) = [p for p in psutil.process_iter(["cmdline"])
                 if any("_run_on_node" in part for part in p.info["cmdline"] or [])]
    os.kill(worker.pid, signal.SIGKILL)

    failed = backend.wait(doomed, timeout=120)
    assert failed.state == "failed" and "ended without a result" in failed.error
    after = backend.wait(backend.start(_spec(collection, tmp_path)), timeout=300)
    assert after.state == "done", after.error


def test_a_user_error_on_the_cluster_keeps_its_message(backend, collection, tmp_path):
    spec = _spec(collection, tmp_path)
    spec.model = "synthetic:/nowhere/weights.safetensors"
    status = backend.wait(backend.start(spec), timeout=120)
    assert status.state == "failed" and "weights.safetensors" in status.error


def test_a_running_job_on_the_cluster_is_cancelled(backend, collection, tmp_path):
    job = backend.start(_spec(collection, tmp_path, kind="train", train={"epochs": 50}))
    deadline = time.monotonic() + 120
    while not any(e["type"] == "step" for e in backend.status(job).events) and time.monotonic() < deadline:
        time.sleep(0.2)
    backend.cancel(job)
    status = backend.wait(job, timeout=120)
    assert status.state == "cancelled"
