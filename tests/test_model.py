"""Model loading from every source a user can name, and its errors."""

from __future__ import annotations

import huggingface_hub
import pytest
import torch

from sam2pal.errors import SamPalError
from sam2pal.model.build import describe, load_model, pick_device

from conftest import IMAGE_SIZE


def test_random_weights_are_deterministic_and_labelled_untrained():
    first, second = load_model("random:tiny", 128, "cpu"), load_model("random:tiny", 128, "cpu")
    assert first.fingerprint == second.fingerprint
    assert first.untrained and "UNTRAINED" in describe(first)
    assert first.sam.image_size == 128 and first.variant == "sam2.1-tiny"


def test_meta_checkpoint_and_bare_state_dict_load_the_same_weights(tiny_checkpoint, tmp_path, tiny):
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(tiny_checkpoint, weights_only=True)["model"], bare)
    for path in (tiny_checkpoint, bare):
        loaded = load_model(str(path), IMAGE_SIZE, "cpu")
        assert loaded.variant == "sam2.1-tiny" and not loaded.untrained
        assert loaded.fingerprint == tiny.fingerprint
        assert len(loaded.checkpoint_sha256) == 64


def test_a_1024_checkpoint_loads_at_another_image_size(tiny_checkpoint):
    assert load_model(str(tiny_checkpoint), 512, "cpu").sam.image_size == 512


def test_hub_names_resolve_to_meta_repos(monkeypatch, tiny_checkpoint):
    asked = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename: asked.append((repo_id, filename)) or str(tiny_checkpoint))
    assert load_model("tiny", IMAGE_SIZE, "cpu").variant == "sam2.1-tiny"
    load_model("facebook/sam2.1-hiera-tiny", IMAGE_SIZE, "cpu")
    assert asked == [("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt")] * 2


def test_other_hub_repo_finds_its_checkpoint(monkeypatch, tiny_checkpoint):
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id: ["README.md", "weights/ft.pt"])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: str(tiny_checkpoint))
    loaded = load_model("lab/beetle-sam2", IMAGE_SIZE, "cpu")
    assert loaded.variant == "sam2.1-tiny" and loaded.name == "lab/beetle-sam2"
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id: ["a.pt", "b.pt"])
    with pytest.raises(SamPalError, match="lab/beetle-sam2:FILE.pt"):
        load_model("lab/beetle-sam2", IMAGE_SIZE, "cpu")


def test_offline_hub_error_names_the_repo_and_model_path(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, filename):
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(SamPalError, match=r"facebook/sam2.1-hiera-large.*--model PATH"):
        load_model("large", IMAGE_SIZE, "cpu")


@pytest.mark.parametrize("name, fragment", [
    ("random:huge", "random:tiny"),
    ("nonsense", "neither a file nor a known model"),
    ("missing/weights.pt", "checkpoint not found"),
])
def test_unknown_models_are_clear_errors(name, fragment):
    with pytest.raises(SamPalError, match=fragment):
        load_model(name, IMAGE_SIZE, "cpu")


def test_a_checkpoint_that_is_not_sam2(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(3)}}, path)
    with pytest.raises(SamPalError, match="not a SAM2 checkpoint"):
        load_model(str(path), IMAGE_SIZE, "cpu")
    path.write_bytes(b"not a pickle")
    with pytest.raises(SamPalError, match="cannot read checkpoint"):
        load_model(str(path), IMAGE_SIZE, "cpu")


@pytest.mark.parametrize("size", [0, 100, 272, 1000])
def test_image_size_must_be_a_multiple_of_32(size):
    with pytest.raises(SamPalError, match=f"--image-size {size}"):
        load_model("random:tiny", size, "cpu")


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(SamPalError, match="--device cpu"):
            pick_device("cuda")
    with pytest.raises(SamPalError, match="--device 'tpu'"):
        pick_device("tpu")
