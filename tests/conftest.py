"""Shared fixtures: a synthetic specimen collection and an untrained tiny SAM2 at 256 px.

No pretrained weights exist on CI machines; `random:tiny` is deterministic, so results are
reproducible, but it is untrained, so tests check plumbing and numbers, not segmentation quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sam2pal.model.build import load_model
from sam2pal.synthetic import write_collection

IMAGE_SIZE = 256

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def collection_master(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("collection")
    write_collection(folder, templates=2, specimens=3, structures=3, size=(160, 120))
    return folder


@pytest.fixture
def collection(collection_master: Path, tmp_path: Path) -> Path:
    """A private copy: 2 templates (templates.json, template_*.png), specimens/ with 3 JPEGs."""
    target = tmp_path / "collection"
    shutil.copytree(collection_master, target)
    return target


@pytest.fixture
def tiny():
    """A fresh untrained SAM2.1-tiny at 256 px on the CPU (fresh: adapters modify it)."""
    return load_model("random:tiny", IMAGE_SIZE, "cpu")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The random:tiny weights saved in Meta's checkpoint format."""
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_tiny_random.pt"
    torch.save({"model": load_model("random:tiny", IMAGE_SIZE, "cpu").sam.state_dict()}, path)
    return path


@pytest.fixture
def app_server(tmp_path):
    """The web app on 127.0.0.1 (random:tiny, 256 px, local worker backend), stopped afterwards."""
    from backends.local import LocalBackend
    from sam2pal.ui.app import AppConfig, build_app, launch_options
    from sam2pal.ui.workspace import Workspaces

    backend = LocalBackend()
    workspaces = Workspaces(tmp_path / "sessions")
    config = AppConfig(model="random:tiny", image_size=IMAGE_SIZE, device="cpu")
    app = build_app(config, backend, workspaces)
    app.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                       **launch_options(config, workspaces))  # as app.py launches it
    try:
        yield app
    finally:
        app.close()
        backend.close()
