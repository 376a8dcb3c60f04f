"""The web app in-process on 127.0.0.1, driven through its API with gradio_client."""

from __future__ import annotations

import json

import pytest
from gradio_client import Client, handle_file
from pycocotools.coco import COCO

from sam2pal.ui.app import AppConfig, build_app
from sam2pal.ui.app import segment as run_segment

from conftest import IMAGE_SIZE


@pytest.fixture
def server():
    app = build_app(AppConfig(model="random:tiny", image_size=IMAGE_SIZE, device="cpu"))
    app.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield app
    finally:
        app.close()


def test_predict_endpoint_returns_a_coco_file_that_pycocotools_loads(server, collection):
    client = Client(server.local_url, verbose=False)
    specimens = sorted((collection / "specimens").iterdir())
    gallery, coco_path, zip_path, status = client.predict(
        handle_file(str(collection / "templates.json")),
        [handle_file(str(collection / f"template_{i}.png")) for i in range(2)],
        [handle_file(str(p)) for p in specimens],
        api_name="/predict",
    )
    assert status.startswith("3 specimens segmented")
    assert len(gallery) == 3
    coco = COCO(coco_path)
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == [p.name for p in specimens]
    assert json.load(open(coco_path))["info"]["untrained_model"] is True
    assert zip_path.endswith(".zip")


def test_missing_templates_is_a_clear_message(collection):
    import gradio as gr

    with pytest.raises(gr.Error, match="COCO template file"):
        run_segment(AppConfig(model="random:tiny", image_size=IMAGE_SIZE, device="cpu"), None, None, None)
