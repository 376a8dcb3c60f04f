"""Palindrome fine-tuning end to end: logs, validation, adapters, resume, refusal."""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from sam2pal.api import finetune, load_templates
from sam2pal.engine.propagate import Propagator
from sam2pal.engine.trainer import LOG_NAME, TrainConfig, Trainer
from sam2pal.errors import SamPalError
from sam2pal.io.images import list_images
from sam2pal.model.adapters import CONFIG_NAME, WEIGHTS_NAME, load_adapter
from sam2pal.model.build import load_model
from sam2pal.synthetic import draw_specimen

from conftest import IMAGE_SIZE


def _log(folder):
    return [json.loads(line) for line in (folder / LOG_NAME).read_text().splitlines()]


def test_training_logs_validates_and_saves_an_adapter_that_reloads(tiny, collection, tmp_path):
    templates = load_templates(collection / "templates.json")
    out = tmp_path / "adapter"
    events = []
    result = finetune(tiny, templates, collection / "specimens", out, TrainConfig(epochs=2, lr=1e-3), progress=events.append)

    assert (out / WEIGHTS_NAME).stat().st_size > 0 and (out / CONFIG_NAME).is_file()
    log = _log(out)
    steps = [e for e in log if "step" in e]
    epochs = [e for e in log if "step" not in e]
    assert [e["step"] for e in steps] == list(range(1, 7))  # 3 specimens × 2 epochs
    assert all(set(e["per_structure"]) == {"head", "wing", "eye"} and e["loss"] > 0 and e["seconds"] > 0 for e in steps)
    assert [e["epoch"] for e in epochs] == [0, 1, 2]  # epoch 0 is the zero-shot baseline
    assert all(set(e["validation_iou"]) == {"head", "wing", "eye"} for e in epochs)
    assert result.validated and result.best_epoch == max(range(3), key=lambda i: epochs[i]["mean_iou"])
    assert [e["type"] for e in events].count("step") == 6

    # the kept adapter, loaded into a fresh model, predicts exactly what the trained model does
    specimen = draw_specimen(160, 120, 3, seed=11)[0]
    trained = Propagator(tiny, templates).logits([specimen]).low_res_logits
    fresh = load_model("random:tiny", IMAGE_SIZE, "cpu")
    load_adapter(fresh, out)
    reloaded = Propagator(fresh, templates).logits([specimen]).low_res_logits
    assert torch.allclose(trained, reloaded, atol=1e-5)
    base = Propagator(load_model("random:tiny", IMAGE_SIZE, "cpu"), templates).logits([specimen]).low_res_logits
    if result.best_epoch > 0:
        assert not torch.allclose(trained, base, atol=1e-4)


def test_later_epochs_read_the_feature_cache(tiny, collection, tmp_path):
    templates = load_templates(collection / "templates.json")
    trainer = Trainer(tiny, templates, list_images(collection / "specimens"), tmp_path / "a", TrainConfig(epochs=2))
    calls = []
    original = tiny.sam.forward_image
    tiny.sam.forward_image = lambda pixels: calls.append(pixels.shape[0]) or original(pixels)
    trainer.run()
    assert len(calls) == 2 + 3  # two templates and three specimens, each encoded once
    assert trainer.features.cache.hits > 0


def test_features_beyond_the_ram_budget_come_back_from_disk(tiny, collection, tmp_path):
    templates = load_templates(collection / "templates.json")
    spill = tmp_path / "features"
    config = TrainConfig(epochs=2, cache_bytes=1, cache_dir=spill)  # RAM holds one image's features
    trainer = Trainer(tiny, templates, list_images(collection / "specimens"), tmp_path / "a", config)
    calls = []
    original = tiny.sam.forward_image
    tiny.sam.forward_image = lambda pixels: calls.append(pixels.shape[0]) or original(pixels)
    trainer.run()
    assert len(calls) == 2 + 3  # still each image encoded once
    assert trainer.features.cache.disk_reads > 0
    assert list(spill.iterdir()) == []  # the spill folder goes with the run


@pytest.fixture(scope="module")
def one_pass_step(collection_master, tmp_path_factory) -> dict:
    """The log of one step with all structures in one pass (random:tiny is the same every load)."""
    out = tmp_path_factory.mktemp("one_pass")
    Trainer(load_model("random:tiny", IMAGE_SIZE, "cpu"), load_templates(collection_master / "templates.json"),
            list_images(collection_master / "specimens"), out, TrainConfig(epochs=1, steps_per_epoch=1)).run()
    return [e for e in _log(out) if "step" in e][0]


@pytest.mark.parametrize(
    ("config", "rows"),
    [(TrainConfig(epochs=1, steps_per_epoch=1), [3]),  # CPU default at 256 px: all fit the budget
     (TrainConfig(epochs=1, steps_per_epoch=1, structures_per_pass=2), [2, 1]),
     (TrainConfig(epochs=1, steps_per_epoch=1, low_memory=True), [1, 1, 1]),
     (TrainConfig(epochs=1, steps_per_epoch=1, structures_per_pass=3, low_memory=True), [3])],
)
def test_a_step_runs_its_structures_in_passes(tiny, collection, tmp_path, monkeypatch, config, rows, one_pass_step):
    import sam2pal.engine.trainer as trainer_module

    seen, original, released = [], trainer_module.palindrome_step, []
    monkeypatch.setattr(trainer_module, "palindrome_step", lambda e, x0, y0, *a: seen.append(len(y0)) or original(e, x0, y0, *a))
    monkeypatch.setattr(trainer_module, "freed_memory_returned", lambda enabled: released.append(enabled) or nullcontext(True))
    templates = load_templates(collection / "templates.json")
    Trainer(tiny, templates, list_images(collection / "specimens"), tmp_path / "a", config).run()
    assert seen == rows
    assert released == [config.low_memory]
    step = [e for e in _log(tmp_path / "a") if "step" in e][0]
    assert set(step["per_structure"]) == {"head", "wing", "eye"}
    # passes change memory and speed, not what is learned
    assert step["loss"] == pytest.approx(one_pass_step["loss"], rel=1e-4)
    assert step["per_structure"] == pytest.approx(one_pass_step["per_structure"], rel=1e-4)


def test_low_memory_returns_freed_memory_on_glibc():
    # in a child process: the allocator setting lasts for the life of the process
    code = ("from sam2pal.engine.allocator import freed_memory_returned\n"
            "with freed_memory_returned(True) as applied: print(applied)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert result.stdout.strip() == str(glibc)


def test_specimens_over_the_pixel_cap_are_skipped_with_a_warning(tiny, collection, tmp_path):
    templates = load_templates(collection / "templates.json")
    specimens = list_images(collection / "specimens")
    events = []
    config = TrainConfig(epochs=1, max_pixels=160 * 120 - 1)  # the synthetic specimens are 160x120
    Trainer(tiny, templates, specimens, tmp_path / "a", config, progress=events.append).run()
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert len(warnings) == len(specimens) and all("--max-pixels" in w for w in warnings)
    assert not [e for e in events if e["type"] == "step"]


def test_structures_per_pass_must_be_positive():
    with pytest.raises(SamPalError, match="--structures-per-pass"):
        TrainConfig(structures_per_pass=0)


def test_single_template_keeps_the_last_epoch_and_says_so(tiny, collection, tmp_path):
    templates = load_templates(collection / "templates.json")
    templates.templates = templates.templates[:1]
    result = finetune(tiny, templates, collection / "specimens", tmp_path / "a", TrainConfig(epochs=2, steps_per_epoch=1))
    validation = json.loads((tmp_path / "a" / "validation.json").read_text())
    assert not result.validated and result.best_epoch == 2
    assert "one template" in validation["note"] and "nothing to validate on" in validation["note"]
    assert validation["held_out"] == [] and len(validation["trained_on"]) == 1


def test_resume_continues_steps_and_epochs(collection, tmp_path):
    templates = load_templates(collection / "templates.json")
    out = tmp_path / "a"
    finetune(load_model("random:tiny", IMAGE_SIZE, "cpu"), templates, collection / "specimens", out,
             TrainConfig(epochs=1, steps_per_epoch=2))
    finetune(load_model("random:tiny", IMAGE_SIZE, "cpu"), templates, collection / "specimens", out,
             TrainConfig(epochs=2, steps_per_epoch=2), resume=out)
    log = _log(out)
    assert [e["step"] for e in log if "step" in e] == [1, 2, 3, 4]
    assert [e["epoch"] for e in log if "step" not in e] == [0, 1, 2]


def test_resume_refuses_a_state_that_lacks_a_trainable_tensor(collection, tmp_path):
    templates = load_templates(collection / "templates.json")
    out = tmp_path / "a"
    finetune(load_model("random:tiny", IMAGE_SIZE, "cpu"), templates, collection / "specimens", out,
             TrainConfig(epochs=1, steps_per_epoch=1))
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    dropped = next(name for name in sorted(state["weights"]) if "lora" in name)
    del state["weights"][dropped]
    torch.save(state, out / "trainer_state.pt")
    with pytest.raises(SamPalError, match=rf"does not fit this model \(0 unexpected, 1 missing trainable tensors, "
                                          rf"e\.g\. {re.escape(dropped)}\); start a new adapter"):
        finetune(load_model("random:tiny", IMAGE_SIZE, "cpu"), templates, collection / "specimens", out,
                 TrainConfig(epochs=2, steps_per_epoch=1), resume=out)


def test_a_cancelled_epoch_is_not_saved_as_done_and_resume_redoes_it(collection, tmp_path):
    templates = load_templates(collection / "templates.json")
    out = tmp_path / "a"
    steps = []
    progress = lambda event: event["type"] == "step" and steps.append(event["step"])  # noqa: E731
    trainer = Trainer(load_model("random:tiny", IMAGE_SIZE, "cpu"), templates, list_images(collection / "specimens"),
                      out, TrainConfig(epochs=2), progress=progress, should_stop=lambda: len(steps) >= 4)
    trainer.run()  # 3 steps an epoch: cancelled one step into epoch 2
    assert [e["epoch"] for e in json.loads((out / "validation.json").read_text())["epochs"]] == [0, 1]
    assert torch.load(out / "trainer_state.pt", weights_only=True)["epoch"] == 1
    finetune(load_model("random:tiny", IMAGE_SIZE, "cpu"), templates, collection / "specimens", out,
             TrainConfig(epochs=2), resume=out)
    log = _log(out)
    assert [e["epoch"] for e in log if "step" not in e] == [0, 1, 2]
    assert [e["step"] for e in log if "step" in e][-3:] == [4, 5, 6]  # all of epoch 2, its first step again


def test_loss_goes_down_on_a_fixed_pair(tmp_path):
    """A fixed template/specimen pair, no augmentation: the cycle loss must fall."""
    model = load_model("random:tiny", 128, "cpu")
    folder = tmp_path / "c"
    folder.mkdir()
    from PIL import Image

    from sam2pal.io.templates import Template, TemplateSet

    image, masks = draw_specimen(128, 128, 1, seed=0)
    Image.fromarray(draw_specimen(128, 128, 1, seed=1)[0]).save(folder / "s.png")
    templates = TemplateSet(["head"], [Template("t.png", folder / "t.png", image, masks)])
    trainer = Trainer(model, templates, [folder / "s.png"], tmp_path / "a",
                      TrainConfig(epochs=1, steps_per_epoch=12, lr=3e-3, augment=False))
    trainer.run()
    losses = [e["loss"] for e in _log(tmp_path / "a") if "step" in e]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_adapter_from_another_base_model_is_refused(tiny, collection, tmp_path, tiny_checkpoint):
    templates = load_templates(collection / "templates.json")
    finetune(tiny, templates, collection / "specimens", tmp_path / "a", TrainConfig(epochs=1, steps_per_epoch=1))
    state = torch.load(tiny_checkpoint, weights_only=True)["model"]
    state["sam_mask_decoder.iou_token.weight"] += 1.0
    other = tmp_path / "other.pt"
    torch.save({"model": state}, other)
    with pytest.raises(SamPalError, match="was trained on random:tiny"):
        load_adapter(load_model(str(other), IMAGE_SIZE, "cpu"), tmp_path / "a")


@pytest.mark.parametrize("mode, encoder_trains", [("decoder", False), ("lora-encoder", True)])
def test_other_modes_save_what_they_train_and_reload(collection, tmp_path, mode, encoder_trains):
    from safetensors.torch import load_file

    templates = load_templates(collection / "templates.json")
    model = load_model("random:tiny", 128, "cpu")
    config = TrainConfig(epochs=1, steps_per_epoch=1, mode="lora" if mode == "lora-encoder" else mode,
                         lora_encoder=mode == "lora-encoder", lora_rank=2)
    trainer = Trainer(model, templates, list_images(collection / "specimens"), tmp_path / "a", config)
    assert (trainer.features.cache is None) == encoder_trains  # a training encoder cannot use cached features
    trainer.run()
    saved = load_file(tmp_path / "a" / WEIGHTS_NAME)
    assert any(k.startswith("image_encoder.") for k in saved) == encoder_trains
    if mode == "decoder":
        assert "sam_mask_decoder.iou_token.weight" in saved and not any("lora_" in k for k in saved)
    fresh = load_model("random:tiny", 128, "cpu")
    load_adapter(fresh, tmp_path / "a")
    state = fresh.sam.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
