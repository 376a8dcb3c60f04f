"""Shared fixtures: a synthetic specimen collection, an untrained tiny SAM2 at 256 px, and the
small SAM2 trained here on synthetic specimens.

No pretrained weights exist on CI machines. `random:tiny` is deterministic but untrained: tests
on it check plumbing and numbers. Tests of segmentation quality use `synthetic`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from sam2pal.model.build import load_model
from sam2pal.synthetic import write_collection

IMAGE_SIZE = 256
DEVICE = os.environ.get("SAM2PAL_TEST_DEVICE", "cpu")  # bench/gpu_check.sh runs engine tests on cuda

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
    return load_model("random:tiny", IMAGE_SIZE, DEVICE)


@pytest.fixture(scope="session")
def synthetic():
    """The committed small SAM2 trained on synthetic specimens (tests/fixtures), at its 256 px.
    Shared: tests that fine-tune must load their own."""
    return load_model("synthetic:256", None, "cpu")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The random:tiny weights saved in Meta's checkpoint format."""
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_tiny_random.pt"
    torch.save({"model": load_model("random:tiny", IMAGE_SIZE, "cpu").sam.state_dict()}, path)
    return path


@contextlib.contextmanager
def _serving(folder: Path, model: str):
    """The web app on 127.0.0.1 (256 px, local worker backend), launched as app.py launches it."""
    from backends.local import LocalBackend
    from sam2pal.ui.app import AppConfig, build_app, launch_options
    from sam2pal.ui.workspace import Workspaces

    backend = LocalBackend()
    workspaces = Workspaces(folder / "sessions")
    config = AppConfig(model=model, image_size=IMAGE_SIZE, device="cpu")
    app = build_app(config, backend, workspaces)
    app.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                       **launch_options(config, workspaces))
    try:
        yield app
    finally:
        app.close()
        backend.close()


@pytest.fixture
def app_server(tmp_path):
    """The web app with random:tiny, stopped afterwards."""
    with _serving(tmp_path, "random:tiny") as app:
        yield app


@pytest.fixture
def synthetic_app_server(tmp_path):
    """The web app with the synthetic model, whose masks are real."""
    with _serving(tmp_path, "synthetic:256") as app:
        yield app
