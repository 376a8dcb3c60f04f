"""A real browser (Debian Chromium driven by Playwright): draw a template, segment, download.

Screenshots of each stage go to $SAM2PAL_SCREENSHOTS (default: a pytest temp folder); the test
prints where. Skipped only where Chromium is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from backends.local import LocalBackend
from sam2pal.synthetic import write_collection
from sam2pal.ui.app import AppConfig, build_app
from sam2pal.ui.workspace import Workspaces

from conftest import IMAGE_SIZE

CHROMIUM = "/usr/lib/chromium/chromium"
FLAGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture
def server(tmp_path):
    backend = LocalBackend()
    workspaces = Workspaces(tmp_path / "sessions")
    app = build_app(AppConfig(model="random:tiny", image_size=IMAGE_SIZE, device="cpu"), backend, workspaces)
    app.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                       allowed_paths=[str(workspaces.root)])
    try:
        yield app
    finally:
        app.close()
        backend.close()


def _stroke(page, layer: str, fx: float, fy: float) -> None:
    """Pick a layer in the editor's layer panel and draw a short stroke at a fraction of the canvas."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    item = page.locator(f"#editor [aria-label='{layer}']")
    for _ in range(4):  # the panel toggles, and may still be closing from the last pick
        if item.is_visible():
            break
        page.locator("#editor button[aria-label='Show Layers']").click()
        try:
            item.wait_for(state="visible", timeout=3000)
        except PlaywrightTimeout:
            continue
    item.click()
    page.wait_for_timeout(700)
    box = page.locator("#editor canvas").first.bounding_box()
    x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, 6):
        page.mouse.move(x + 6 * i, y + 2 * i, steps=3)
    page.mouse.up()
    page.wait_for_timeout(500)


def test_draw_review_segment_and_download_in_a_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("SAM2PAL_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {shots}")
    collection = tmp_path / "collection"
    write_collection(collection, templates=1, specimens=2, structures=1, size=(320, 240))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.local_url)
        page.locator("#template-files input[type=file]").set_input_files(str(collection / "template_0.png"))
        page.locator("#structures textarea").fill("head")
        page.wait_for_timeout(1500)
        page.locator("#apply-structures").click()
        page.wait_for_selector("#editor canvas")
        page.wait_for_timeout(2500)  # let the editor finish loading the background before drawing
        _stroke(page, "layer-1", 0.45, 0.35)
        page.screenshot(path=str(shots / "0_drawn.png"), full_page=True)
        page.locator("#save-masks").click()
        page.wait_for_function(
            "document.querySelector('#template-note')?.innerText.includes('1 of 1 structures have a mask')",
            timeout=60_000)
        page.screenshot(path=str(shots / "1_template_review.png"), full_page=True)

        page.get_by_role("tab", name="3. Segment the collection").click()
        page.locator("#specimens input[type=file]").set_input_files(
            [str(p) for p in sorted((collection / "specimens").iterdir())])
        page.wait_for_timeout(1500)
        page.locator("#segment").click()
        page.wait_for_function("document.querySelector('#predict-status textarea')?.value.startsWith('done')",
                               timeout=240_000)
        page.wait_for_selector("#results img")
        page.screenshot(path=str(shots / "2_segmented.png"), full_page=True)

        page.get_by_role("tab", name="4. Export").click()
        page.locator("#export").click()
        page.wait_for_selector("#coco-out a", timeout=60_000)
        with page.expect_download() as download:
            page.locator("#coco-out a").first.click()
        saved = tmp_path / "downloaded.json"
        download.value.save_as(saved)
        page.screenshot(path=str(shots / "3_export.png"), full_page=True)
        browser.close()

    coco = COCO(str(saved))
    assert sorted(i["file_name"] for i in coco.dataset["images"]) == ["specimen_0000.jpg", "specimen_0001.jpg"]
    assert [c["name"] for c in coco.dataset["categories"]] == ["head"]
    assert sorted(p.name for p in shots.iterdir()) == ["0_drawn.png", "1_template_review.png", "2_segmented.png", "3_export.png"]
