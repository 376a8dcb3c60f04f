"""What a client of a shared host sends is checked: it never picks a server path or a server limit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gradio_client import Client, handle_file

from sam2pal.errors import SamPalError
from sam2pal.jobs import check_client_request
from sam2pal.ui.handlers import AppConfig, SamPalApp
from sam2pal.ui.workspace import Workspaces

from conftest import IMAGE_SIZE


def _layers(height: int, width: int, count: int) -> dict:
    layers = []
    for k in range(count):
        layer = np.zeros((height, width, 4), np.uint8)
        layer[10 + 10 * k : 20 + 10 * k, 10:30] = (255, 0, 0, 255)
        layers.append(layer)
    return {"background": np.zeros((height, width, 4), np.uint8), "layers": layers, "composite": None}


def _session_with_two_masks(tmp_path, collection, structures: str):
    """A page session whose first template has one drawn mask for each of two structures."""
    ui = SamPalApp(AppConfig(model="random:tiny", image_size=IMAGE_SIZE, device="cpu"), backend=None,
                   workspaces=Workspaces(tmp_path / "sessions"))
    token, ws = ui.workspaces.get(None)
    ui.upload_templates([str(collection / "template_0.png")], token)
    ui.apply_structures(structures, token)
    ui.save_masks(_layers(120, 160, 2), "template_0.png", token)
    return ui, token, ws


def test_structure_names_never_leave_the_session_folder(tmp_path, collection):
    ui, token, ws = _session_with_two_masks(tmp_path, collection, "../../../../x\n..\\..\\y")
    written = sorted(p for p in tmp_path.rglob("*.png") if "masks" in p.parts)
    assert len(written) == 2 and all(p.parent == ws.root / "masks" for p in written)
    assert not (tmp_path / "x.png").exists() and not list(tmp_path.parent.glob("*x.png"))
    assert ws.mask("template_0.png", "../../../../x").sum() == 200  # the name itself still works
    with pytest.raises(SamPalError, match="not in this session"):
        ws.template_image("../../../etc/passwd")


@pytest.mark.parametrize("extra, field", [
    ({"train": {"cache_dir": "/tmp/anywhere"}}, "train.cache_dir"),
    ({"train": {"cache_bytes": 10**12}}, "train.cache_bytes"),
    ({"train": {"max_pixels": 10**12}}, "train.max_pixels"),
    ({"train": {"feature_cache_dir": "/x"}}, "train.feature_cache_dir"),
    ({"train": {"epochs": 10**6}}, "train.epochs"),
    ({"train": {"mode": "rm -rf"}}, "train.mode"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"image_size": 100}, "image_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"train": {"folds": 3, "fold": 3}}, "train.fold"),
])
def test_client_settings_outside_what_a_user_may_choose_are_refused(extra, field):
    with pytest.raises(SamPalError, match=field.replace(".", r"\.")):
        check_client_request(extra)


def test_client_settings_a_user_may_choose_pass():
    check_client_request({"image_size": 512, "batch_size": 2, "orientation": "rot4",
                          "train": {"epochs": 3, "mode": "lora", "lr": None, "lora_rank": 4, "seed": 1,
                                    "cycle_memory": "mask", "augment": False, "folds": 3, "fold": 2}})


def test_a_remote_client_cannot_make_the_server_create_a_folder(app_server, collection, tmp_path):
    client = Client(app_server.local_url, verbose=False)
    target = tmp_path / "chosen_by_client"
    files = (handle_file(str(collection / "templates.json")), [handle_file(str(collection / "template_0.png")),
             handle_file(str(collection / "template_1.png"))],
             [handle_file(str(sorted((collection / "specimens").iterdir())[0]))])
    with pytest.raises(Exception, match=r"train\.cache_dir cannot be set by a client"):
        client.predict("train", *files, json.dumps({"train": {"cache_dir": str(target)}}), api_name="/submit_job")
    with pytest.raises(Exception, match=r"params\.workdir cannot be set by a client"):
        client.predict("predict", *files, json.dumps({"workdir": str(target)}), api_name="/submit_job")
    assert not target.exists()


def test_uploaded_names_keep_their_extension_and_stay_in_the_folder():
    from sam2pal.ui.workspace import Workspace

    assert Workspace.stored_name("../../a b.PNG") == "a_b.png"
    assert Workspace.stored_name("蝶.jpg").startswith("image-") and Workspace.stored_name("蝶.jpg").endswith(".jpg")
    assert Workspace.stored_name("蝶.jpg") != Workspace.stored_name("胸.jpg")


def test_a_structure_keeps_its_mask_file_whatever_the_other_structures(tmp_path, collection):
    ui, token, ws = _session_with_two_masks(tmp_path, collection, "a b\na_b")
    before = ws.mask("template_0.png", "a_b")
    ui.apply_structures("a_b", token)  # "a b" removed: "a_b" must still read its own mask
    assert np.array_equal(ws.mask("template_0.png", "a_b"), before)


def test_an_adapter_zip_that_unpacks_too_large_is_refused(tmp_path, monkeypatch):
    import zipfile

    import sam2pal.ui.workspace as workspace

    archive = tmp_path / "adapter.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("adapter_config.json", "{}")
        bundle.writestr("adapter_model.safetensors", b"\0" * 100_000)  # compresses to almost nothing
    monkeypatch.setattr(workspace, "MAX_ADAPTER_BYTES", 10_000)
    _, ws = Workspaces(tmp_path / "sessions").get(None)
    with pytest.raises(SamPalError, match="unpacks to 100,000 bytes"):
        ws.store_adapter(archive)
    assert ws.uploaded_adapter() is None and not [p for p in ws.root.iterdir() if p.name.startswith("tmp")]
