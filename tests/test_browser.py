"""A real browser (Debian Chromium driven by Playwright): draw a template, import a COCO template
set, segment with the synthetic model (real masks), download and score the result.

Screenshots of each stage go to $SAM2PAL_SCREENSHOTS (default: a pytest temp folder); the test
prints where. Skipped only where Chromium is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from sam2pal.quality import truth_masks
from sam2pal.metrics import iou
from sam2pal.synthetic import write_collection
from sam2pal.synthetic.domains import write_collection as write_synthetic_collection

CHROMIUM = "/usr/lib/chromium/chromium"
FLAGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


def _stroke(page, fx: float, fy: float) -> None:
    """Draw a short stroke on the active layer at a fraction of the canvas, slowly enough for a
    software-rendered canvas on a busy machine to register every move."""
    box = page.locator("#editor canvas").first.bounding_box()
    x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
    page.mouse.move(x, y)
    page.wait_for_timeout(200)
    page.mouse.down()
    for i in range(1, 8):
        page.mouse.move(x + 5 * i, y + 2 * i, steps=4)
        page.wait_for_timeout(60)
    page.mouse.up()
    page.wait_for_timeout(800)


def test_draw_review_segment_and_download_in_a_browser(synthetic_app_server, tmp_path):
    app_server = synthetic_app_server
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("SAM2PAL_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {shots}")
    collection = tmp_path / "collection"
    write_collection(collection, templates=1, specimens=2, structures=1, size=(320, 240))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app_server.local_url)
        page.wait_for_function("document.querySelector('#template-note')?.innerText.includes('Session ready')",
                               timeout=60_000)  # the page has attached to its workspace
        page.locator("#template-files input[type=file]").set_input_files(str(collection / "template_0.png"))
        page.locator("#structures textarea").fill("head")
        page.wait_for_timeout(1500)
        page.locator("#apply-structures").click()
        page.wait_for_selector("#editor canvas")
        for _ in range(2):  # apply, then reload the template: each covers the editor while pending
            page.wait_for_timeout(1000)
            page.wait_for_function("!document.querySelector('#editor [data-testid=status-tracker]:not(.hide)')",
                                   timeout=60_000)
        page.wait_for_timeout(1500)  # let the editor finish drawing the background
        _stroke(page, 0.45, 0.35)  # the first layer ("head") is the active one
        page.screenshot(path=str(shots / "0_drawn.png"), full_page=True)
        page.locator("#save-masks").click()
        page.wait_for_function(
            "document.querySelector('#template-note')?.innerText.includes('1 of 1 structures have a mask')",
            timeout=60_000)
        page.screenshot(path=str(shots / "1_template_review.png"), full_page=True)

        # a template set from another tool, with masks of real structures: what gets segmented
        held_out = write_synthetic_collection(tmp_path / "held_out", "in-domain", 201, templates=1, specimens=2)
        page.get_by_text("Import a COCO template file").click()
        page.locator("#coco-file input[type=file]").set_input_files(str(held_out.templates))
        page.locator("#coco-images input[type=file]").set_input_files(str(held_out.folder / "template_0.png"))
        page.wait_for_timeout(1500)
        page.locator("#import-coco").click()
        page.wait_for_function("document.querySelector('#template-note')?.innerText.includes('Imported 1 templates')",
                               timeout=60_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(shots / "1b_imported.png"), full_page=True)

        page.get_by_role("tab", name="3. Segment the collection").click()
        page.locator("#specimens input[type=file]").set_input_files(
            [str(p) for p in sorted(held_out.specimens.iterdir())])
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
    assert [c["name"] for c in coco.dataset["categories"]] == held_out.structures
    assert sorted(p.name for p in shots.iterdir()) == ["0_drawn.png", "1_template_review.png", "1b_imported.png",
                                                       "2_segmented.png", "3_export.png"]
    truth = truth_masks(held_out)
    scores = []
    for image in coco.dataset["images"]:
        for category in coco.dataset["categories"]:
            true = truth[image["file_name"]][category["name"]]
            predicted = np.zeros_like(true)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"], catIds=[category["id"]])):
                predicted |= coco.annToMask(ann).astype(bool)
            scores.append(iou(predicted, true))
    assert np.mean(scores) >= 0.3  # real masks (0.48 measured; pasting the template scores ~0.16)
