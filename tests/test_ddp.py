"""`sam2pal train` on two processes (torchrun, gloo on CPU) makes the adapter one process makes
when it accumulates both processes' palindromes per step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

import pytest
import torch
from safetensors.torch import load_file

from sam2pal.cli import main
from sam2pal.model.adapters import WEIGHTS_NAME
from sam2pal.synthetic.domains import write_collection

# With the same thread count (torchrun gives each rank one) the two make the same arithmetic up to
# the order of the all-reduce; with other counts the matmuls round differently, and Adam's first
# steps (g / |g|) turn that noise on near-zero gradient components into differences of ±lr.
TOLERANCE = 1e-5


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return write_collection(tmp_path_factory.mktemp("ddp") / "c", "in-domain", seed=21, templates=3, specimens=6)


def _args(files, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["train", "--templates", str(files.templates), "--images", str(files.specimens), "--out", str(out),
            "--model", "synthetic:256", "--device", "cpu", "--quiet", "--epochs", str(epochs),
            "--steps-per-epoch", "2", "--lr", "1e-3", "--seed", "4", *extra]


def test_two_ranks_make_the_adapter_of_one_process_accumulating_their_steps(collection, tmp_path, one_thread):
    assert main(_args(collection, tmp_path / "single", "--accumulate", "2")) == 0
    assert main(_args(collection, tmp_path / "ddp", "--nproc", "2")) == 0

    # the last weights (the adapter file holds the epoch validation kept, maybe the untouched one)
    single, ddp = (torch.load(tmp_path / name / "trainer_state.pt", weights_only=True)["weights"]
                   for name in ("single", "ddp"))
    assert single.keys() == ddp.keys() and single
    for name in single:
        assert torch.allclose(single[name], ddp[name], atol=TOLERANCE, rtol=0), name
    lora_b = [value for name, value in single.items() if "lora_B" in name]
    assert lora_b and any(value.abs().max() > 1e-4 for value in lora_b)  # two steps moved them from zero
    assert load_file(str(tmp_path / "ddp" / WEIGHTS_NAME)).keys() == load_file(str(tmp_path / "single" / WEIGHTS_NAME)).keys()

    logs = {name: [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
            for name in ("single", "ddp")}
    steps = {name: [entry for entry in entries if "step" in entry] for name, entries in logs.items()}
    assert [len(s) for s in steps.values()] == [2, 2]  # only rank 0 logs
    assert [len(entry["specimens"]) for entry in steps["single"]] == [2, 2]
    for one, two in zip(steps["single"], steps["ddp"]):
        assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
        assert two["specimens"] == one["specimens"][:1]  # rank 0 ran the first of each step's two
    validation = {name: json.loads((tmp_path / name / "validation.json").read_text()) for name in ("single", "ddp")}
    assert validation["single"]["held_out"] == validation["ddp"]["held_out"]
    assert len(validation["ddp"]["epochs"]) == 2


def test_accumulated_micro_batches_step_once_with_the_mean_of_their_gradients(collection, tmp_path):
    """--accumulate N: one optimiser step per N palindromes, with the mean of their gradients (the
    LabPics script stepped every micro-batch and summed the losses)."""
    from sam2pal.engine.trainer import TrainConfig, Trainer
    from sam2pal.io.images import list_images
    from sam2pal.io.templates import load_coco_templates
    from sam2pal.model.build import load_model

    trainer = Trainer(load_model("synthetic:256", device="cpu"), load_coco_templates(collection.templates),
                      list_images(collection.specimens), tmp_path / "out",
                      TrainConfig(accumulate=2, grad_clip=1e9, epochs=1, steps_per_epoch=1, seed=4))
    steps: list[dict[str, torch.Tensor]] = []
    trainer.optimizer.step = lambda *args, **kwargs: steps.append(
        {id(p): p.grad.clone() for p in trainer.params if p.grad is not None})
    order = trainer._epoch_order()
    assert trainer._train_step([(0, order[0]), (1, order[1])]) is not None
    trainer.step = 0  # the micro-batches' random streams belong to step 0
    alone = []
    for slot in (0, 1):
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer._palindromes(slot, order[slot][1])  # (kind, specimen)
        alone.append({id(p): p.grad.clone() * 2 for p in trainer.params if p.grad is not None})  # its own full loss
    assert len(steps) == 1 and steps[0]
    for key, gradient in steps[0].items():
        assert torch.allclose(gradient, (alone[0][key] + alone[1][key]) / 2, atol=1e-7, rtol=1e-5)


def test_nproc_is_only_for_train(collection, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--templates", str(collection.templates), "--images", str(collection.specimens),
              "--out", str(tmp_path / "o"), "--finetune", "--nproc", "2"])
    assert "--nproc is for `sam2pal train`" in capsys.readouterr().err


def test_a_rank_that_dies_stops_the_run_with_a_message_and_resume_finishes_it(collection, tmp_path):
    out = tmp_path / "adapter"
    command = [sys.executable, "-m", "sam2pal.cli", *_args(collection, out, "--nproc", "2", epochs=6)]
    launcher = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (out / "trainer_state.pt").is_file() and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.1)
    ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True)
             if p.environ().get("RANK") == "1" and "sam2pal.cli" in " ".join(p.cmdline())]
    assert len(ranks) == 1, "rank 1 was not found running"
    os.kill(ranks[0].pid, signal.SIGKILL)
    _, errors = launcher.communicate(timeout=180)

    assert launcher.returncode != 0
    assert "run the same command with --resume OUT to continue" in errors
    saved = json.loads((out / "validation.json").read_text())["epochs"]
    assert 2 <= len(saved) < 7  # zero-shot and at least one epoch, not all six

    assert main(_args(collection, out, "--nproc", "2", "--resume", str(out), epochs=6)) == 0
    finished = json.loads((out / "validation.json").read_text())["epochs"]
    assert [entry["epoch"] for entry in finished] == list(range(7))
    assert finished[: len(saved)] == saved  # the epochs before the crash are kept as they were
