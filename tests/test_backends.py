"""The local backend: jobs in worker processes, events, results, cancel, crash isolation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backends import available, get_backend
from backends.local import LocalBackend
from sam2pal.errors import SamPalError
from sam2pal.jobs import JobCancelled, JobSpec, JobStatus, apply_event, final_event

from conftest import IMAGE_SIZE


def _spec(collection, tmp_path, kind="predict", **extra) -> JobSpec:
    return JobSpec(kind=kind, workdir=str(tmp_path / kind), templates=str(collection / "templates.json"),
                   images=str(collection / "specimens"), model="random:tiny", image_size=IMAGE_SIZE,
                   device="cpu", **extra)


def _wait(backend, job_id, timeout=240) -> JobStatus:
    status = backend.wait(job_id, timeout=timeout)
    assert status.finished, f"job {job_id} did not finish: {status}"
    return status


@pytest.fixture
def backend():
    local = LocalBackend()
    yield local
    local.close()


def test_backends_are_found_through_entry_points():
    assert "local" in available()
    assert isinstance(get_backend("local"), LocalBackend)
    with pytest.raises(ValueError, match="'nope' is not installed"):
        get_backend("nope")


def test_spec_round_trips_through_json(collection, tmp_path):
    spec = _spec(collection, tmp_path, kind="train", train={"epochs": 2})
    assert JobSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="job kind"):
        JobSpec(kind="paint", workdir="w", templates="t", images="i")


def test_predict_and_train_jobs_run_in_order_with_events(backend, collection, tmp_path):
    train = backend.start(_spec(collection, tmp_path, kind="train", train={"epochs": 1, "steps_per_epoch": 2}))
    predict = backend.start(_spec(collection, tmp_path))
    assert backend.status(predict).state == "queued"  # one job at a time
    trained = _wait(backend, train)
    assert trained.state == "done", trained.error
    assert [e["step"] for e in trained.events if e["type"] == "step"] == [1, 2]
    assert any(e["type"] == "epoch" for e in trained.events)
    assert trained.files["adapter_zip"].endswith("adapter.zip")
    predicted = _wait(backend, predict)
    assert predicted.state == "done", predicted.error
    assert predicted.progress == 1.0
    report = json.loads(open(predicted.files["report"]).read())
    assert report["n_ok"] == 3


def test_a_user_error_fails_the_job_with_its_message(backend, collection, tmp_path):
    spec = _spec(collection, tmp_path)
    spec.templates = str(tmp_path / "missing.json")
    status = _wait(backend, backend.start(spec))
    assert status.state == "failed" and "missing.json" in status.error


def test_a_killed_worker_fails_its_job_and_the_next_job_still_runs(backend, collection, tmp_path):
    doomed = backend.start(_spec(collection, tmp_path, kind="train", train={"epochs": 50}))
    after = backend.start(_spec(collection, tmp_path))
    while backend.status(doomed).state != "running":
        time.sleep(0.05)
    backend._jobs[doomed].process.kill()  # what the kernel's OOM killer would do
    failed = _wait(backend, doomed)
    assert failed.state == "failed" and "exit code" in failed.error
    assert _wait(backend, after).state == "done"


def test_clicks_skip_the_queue_and_share_one_process_until_idle(collection, tmp_path):
    backend = LocalBackend(click_idle_seconds=1.0)
    backend._running = "a fine-tune"  # the job queue is busy: a queued job would wait for it
    try:
        def click(name):
            spec = JobSpec(kind="points", workdir=str(tmp_path / name), templates="",
                           images=str(collection / "template_0.png"), model="random:tiny",
                           image_size=IMAGE_SIZE, device="cpu", points=[[40, 60, 1]])
            status = _wait(backend, backend.start(spec), timeout=120)
            assert status.state == "done", status.error
            return (np.asarray(Image.open(status.files["mask"])) > 0), backend._clicks._process.pid

        first, pid = click("first")
        second, same_pid = click("second")
        assert first.shape == (120, 160) and np.array_equal(first, second)
        assert same_pid == pid  # the model stayed loaded in one process
        backend._clicks._process.kill()  # a crashed click process is replaced on the next click
        backend._clicks._process.join()
        after_crash, crash_pid = click("after-crash")
        assert crash_pid != pid and after_crash.shape == (120, 160)
        pid = crash_pid
        deadline = time.monotonic() + 30
        while backend._clicks._process is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert backend._clicks._process is None  # idle: its memory is given back
        third, new_pid = click("third")
        assert new_pid != pid and third.shape == (120, 160)
    finally:
        backend.close()
    assert backend._clicks._process is None


def test_a_points_runner_loads_its_model_once_and_encodes_an_image_again_only_when_it_changes(
        collection, tmp_path, monkeypatch):
    from sam2pal import api
    from sam2pal.jobs import PointsRunner

    loads = []
    original = api.load_model
    monkeypatch.setattr(api, "load_model", lambda *args: loads.append(args) or original(*args))
    image = tmp_path / "template.png"
    image.write_bytes((collection / "template_0.png").read_bytes())
    runner = PointsRunner()

    def click(points):
        spec = JobSpec(kind="points", workdir=str(tmp_path / "job"), templates="", images=str(image),
                       model="random:tiny", image_size=IMAGE_SIZE, device="cpu", points=points)
        return np.asarray(Image.open(runner.run(spec)["mask"])) > 0

    first = click([[40, 60, 1]])
    click([[40, 60, 1], [100, 20, 0]])
    assert len(loads) == 1 and runner._prompter.cache.misses == 1
    Image.open(collection / "template_1.png").save(image)  # the user replaced the template image
    os.utime(image, ns=(time.time_ns() + 10**9,) * 2)
    click([[40, 60, 1]])
    assert len(loads) == 1 and runner._prompter.cache.misses == 2
    assert first.shape == (120, 160)


def test_the_click_process_decodes_prompts_on_one_thread_and_encodes_on_all(collection, tmp_path, monkeypatch):
    import torch

    from sam2pal.engine import frames, points
    from sam2pal.jobs import PointsRunner

    threads = {}
    encode, prompt = frames.Encoder.encode_images, points.prompt
    monkeypatch.setattr(frames.Encoder, "encode_images",
                        lambda self, *a: threads.setdefault("encode", torch.get_num_threads()) and encode(self, *a))
    monkeypatch.setattr(points, "prompt", lambda *a: threads.setdefault("decode", torch.get_num_threads()) and prompt(*a))
    before = torch.get_num_threads()
    spec = JobSpec(kind="points", workdir=str(tmp_path), templates="", images=str(collection / "template_0.png"),
                   model="random:tiny", image_size=IMAGE_SIZE, device="cpu", points=[[40, 60, 1]])
    one = np.asarray(Image.open(PointsRunner(decoder_threads=1).run(spec)["mask"])) > 0
    assert threads == {"encode": before, "decode": 1} and torch.get_num_threads() == before
    threads.clear()
    default = np.asarray(Image.open(PointsRunner().run(spec)["mask"])) > 0
    assert threads == {"encode": before, "decode": before}
    assert (one != default).mean() < 0.001  # the thread count changes rounding, not the mask


def test_a_click_past_its_time_limit_fails_and_frees_the_lane(collection, tmp_path):
    backend = LocalBackend(click_time_limit=0.5)  # less than starting a process takes
    try:
        spec = JobSpec(kind="points", workdir=str(tmp_path), templates="", images=str(collection / "template_0.png"),
                       model="random:tiny", image_size=IMAGE_SIZE, device="cpu", points=[[40, 60, 1]])
        status = _wait(backend, backend.start(spec), timeout=60)
        assert status.state == "failed" and "no mask after 0.5 s" in status.error
        assert backend._clicks._process is None
    finally:
        backend.close()


def test_cancel_a_queued_and_a_running_job(backend, collection, tmp_path):
    running = backend.start(_spec(collection, tmp_path, kind="train", train={"epochs": 50}))
    queued = backend.start(_spec(collection, tmp_path))
    backend.cancel(queued)
    assert backend.status(queued).state == "cancelled"
    while not any(e["type"] == "step" for e in backend.status(running).events):
        time.sleep(0.1)
    backend.cancel(running)
    assert _wait(backend, running, timeout=60).state == "cancelled"


def test_how_a_job_ends_becomes_its_last_event():
    def raising(exc):
        def work():
            raise exc
        return work

    assert final_event(lambda: {"mask": "m.png"}) == {"type": "done", "files": {"mask": "m.png"}}
    assert final_event(raising(JobCancelled())) == {"type": "cancelled"}
    assert final_event(raising(SamPalError("x.png is not an image"))) == {"type": "error", "message": "x.png is not an image"}
    crash = final_event(raising(ZeroDivisionError("division by zero")))
    assert crash["message"] == "ZeroDivisionError: division by zero" and "Traceback" in crash["trace"]


def test_apply_event_tracks_progress():
    status = JobStatus("j", "train", "running")
    apply_event(status, {"type": "step", "step": 3, "total_steps": 12, "loss": 0.5})
    assert status.progress == 0.25 and "3/12" in status.message
    apply_event(status, {"type": "progress", "done": 1, "total": 4})
    assert status.progress == 0.25 and status.message == "1/4 images"


def test_remote_backend_runs_a_job_on_another_server(app_server, collection, tmp_path):
    from backends.remote import RemoteBackend

    remote = RemoteBackend(app_server.local_url)
    job_id = remote.start(_spec(collection, tmp_path / "client"))
    status = _wait(remote, job_id)
    assert status.state == "done", status.error
    report = json.loads(open(status.files["report"]).read())
    assert report["n_ok"] == 3
    assert str(tmp_path / "client") in status.files["predictions"]  # downloaded next to the spec
    assert len(list((tmp_path / "client" / "predict" / "out" / "masks").iterdir())) == 9


def test_remote_backend_predicts_with_the_adapter_fine_tuned_here(app_server, collection, tmp_path):
    from backends.remote import RemoteBackend
    from sam2pal.model.build import file_sha256

    remote = RemoteBackend(app_server.local_url)
    train = _spec(collection, tmp_path / "train", kind="train", train={"epochs": 1, "steps_per_epoch": 1})
    trained = _wait(remote, remote.start(train))
    assert trained.state == "done", trained.error
    adapter = trained.files["adapter"]
    predicted = _wait(remote, remote.start(_spec(collection, tmp_path / "predict", adapter=adapter)))
    assert predicted.state == "done", predicted.error
    info = json.loads(open(predicted.files["predictions"]).read())["info"]
    assert info["adapter"]["sha256"] == file_sha256(Path(adapter) / "adapter_model.safetensors")


def test_remote_backend_refusals_are_messages_and_clicks_say_where_they_work(app_server, collection, tmp_path):
    import gradio as gr

    from backends.remote import RemoteBackend
    from sam2pal.ui.handlers import AppConfig, SamPalApp
    from sam2pal.ui.workspace import Workspaces

    remote = RemoteBackend(app_server.local_url)
    with pytest.raises(SamPalError, match=r"^the remote server refused: .*train\.cache_dir"):
        remote.start(_spec(collection, tmp_path, kind="train", train={"cache_dir": str(tmp_path / "x")}))
    ui = SamPalApp(AppConfig(model="random:tiny", image_size=IMAGE_SIZE, device="cpu"), remote, Workspaces(tmp_path / "ws"))
    token, _ = ui.workspaces.get(None)
    ui.upload_templates([str(collection / "template_0.png")], token)
    click = gr.SelectData(target=None, data={"index": [40, 60], "value": None, "selected": True})
    with pytest.raises(gr.Error, match="click points need the model on this server.*--backend local"):
        ui.click_point([], "inside (positive)", "template_0.png", token, click)


def test_remote_backend_needs_an_address():
    from backends.remote import RemoteBackend

    with pytest.raises(ValueError, match="--remote-url"):
        RemoteBackend(None)


@pytest.fixture
def fake_spaces(monkeypatch):
    """Stands in for the `spaces` package only; it records the duration asked for."""
    import sys
    import types

    asked = []
    module = types.ModuleType("spaces")
    module.GPU = lambda duration: (asked.append(duration), lambda fn: fn)[1]
    monkeypatch.setitem(sys.modules, "spaces", module)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    return asked


def test_zerogpu_backend_is_only_for_zerogpu_spaces(monkeypatch):
    from backends.zerogpu import ZeroGPUBackend

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    with pytest.raises(ValueError, match="SPACES_ZERO_GPU"):
        ZeroGPUBackend()


def test_zerogpu_refuses_a_long_fine_tune_and_says_why(fake_spaces, collection, tmp_path):
    from backends.zerogpu import ZeroGPUBackend

    backend = ZeroGPUBackend()
    status = backend.status(backend.start(_spec(collection, tmp_path, kind="train", train={"epochs": 500})))
    assert status.state == "failed" and "more than one ZeroGPU call allows" in status.error
    assert fake_spaces == []


def test_zerogpu_answers_a_click(fake_spaces, collection, tmp_path):
    from backends.zerogpu import ZeroGPUBackend

    backend = ZeroGPUBackend()
    spec = JobSpec(kind="points", workdir=str(tmp_path), templates="", images=str(collection / "template_0.png"),
                   model="random:tiny", image_size=IMAGE_SIZE, device="cpu", points=[[40, 60, 1]])
    status = _wait(backend, backend.start(spec), timeout=120)
    assert status.state == "done", status.error
    assert (np.asarray(Image.open(status.files["mask"])) > 0).shape == (120, 160)
    assert len(fake_spaces) == 1 and fake_spaces[0] < 120  # a short call for one image


def test_zerogpu_runs_a_prediction_with_an_explicit_duration(fake_spaces, collection, tmp_path):
    from backends.zerogpu import ZeroGPUBackend, ZeroGPULimits

    backend = ZeroGPUBackend()
    status = _wait(backend, backend.start(_spec(collection, tmp_path)))
    assert status.state == "done", status.error
    limits = ZeroGPULimits()
    assert fake_spaces == [int(limits.startup_seconds + 3 * limits.seconds_per_image + 0.999)]
