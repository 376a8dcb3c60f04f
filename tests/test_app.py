"""The web app: API endpoints over HTTP with gradio_client, and the page's handlers directly."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from pycocotools.coco import COCO

from backends.local import LocalBackend
from sam2pal.errors import SamPalError
from sam2pal.ui.handlers import BUSY_TICK_SECONDS, IDLE_TICK_SECONDS, AppConfig, SamPalApp
from sam2pal.io.overlays import structure_color
from sam2pal.ui.editing import EDITOR_MAX_SIDE, editor_image, layer_masks, tinted
from sam2pal.ui.workspace import Limits, Workspaces, extract_zip

from conftest import IMAGE_SIZE

CONFIG = AppConfig(model="random:tiny", image_size=IMAGE_SIZE, device="cpu")


def _session_with(ui: SamPalApp, collection: Path):
    """A new session holding the collection's two templates and its specimens."""
    token, ws = ui.workspaces.get(None)
    ws.import_coco(str(collection / "templates.json"), [str(collection / "template_0.png"), str(collection / "template_1.png")])
    ws.add_specimens([str(p) for p in sorted((collection / "specimens").iterdir())], Limits())
    return token, ws


@pytest.fixture
def backend():
    local = LocalBackend()
    yield local
    local.close()


def test_api_trains_then_predicts_and_the_coco_file_loads(app_server, collection):
    client = Client(app_server.local_url, verbose=False)
    templates = handle_file(str(collection / "templates.json"))
    images = [handle_file(str(collection / f"template_{i}.png")) for i in range(2)]
    specimens = [handle_file(str(p)) for p in sorted((collection / "specimens").iterdir())]
    adapter_zip, validation = client.predict(templates, images, specimens, 1, "lora", 2, 0, api_name="/train")
    assert zipfile.ZipFile(adapter_zip).namelist().count("adapter_model.safetensors") == 1
    assert json.loads(validation)["epochs"][0]["epoch"] == 0

    coco_path, zip_path, report = client.predict(templates, images, specimens, 0, "none", api_name="/predict")
    coco = COCO(coco_path)
    assert len(coco.getImgIds()) == 3 and [c["name"] for c in coco.dataset["categories"]] == ["head", "wing", "eye"]
    for annotation in coco.loadAnns(coco.getAnnIds()):
        assert coco.annToMask(annotation).shape == (120, 160)
    assert json.loads(report)["n_ok"] == 3
    assert "predictions.json" in zipfile.ZipFile(zip_path).namelist()


def test_job_endpoints_for_the_remote_backend(app_server, collection):
    client = Client(app_server.local_url, verbose=False)
    job_id = client.predict("predict", handle_file(str(collection / "templates.json")),
                            [handle_file(str(collection / f"template_{i}.png")) for i in range(2)],
                            [handle_file(str(sorted((collection / "specimens").iterdir())[0]))], "{}",
                            api_name="/submit_job")
    status = json.loads(client.predict(job_id, api_name="/job_status"))
    assert status["job_id"] == job_id and status["kind"] == "predict"
    with pytest.raises(Exception, match="no job"):
        client.predict("unknown", api_name="/job_status")


def _editor_value(height, width, strokes):
    """What the ImageEditor sends: background plus one RGBA layer per structure."""
    layers = []
    for box in strokes:
        layer = np.zeros((height, width, 4), np.uint8)
        if box is not None:
            y0, y1, x0, x1 = box
            layer[y0:y1, x0:x1] = (255, 0, 0, 255)
        layers.append(layer)
    return {"background": np.zeros((height, width, 4), np.uint8), "layers": layers, "composite": None}


def test_drawn_layers_become_masks_and_the_review_shows_them(tmp_path, collection):
    ui = SamPalApp(CONFIG, backend=None, workspaces=Workspaces(tmp_path))
    token, ws = ui.workspaces.get(None)
    ui.upload_templates([str(collection / "template_0.png")], token)
    ui.apply_structures("head\nwing", token)
    review, note = ui.save_masks(_editor_value(120, 160, [(10, 20, 30, 60), None]), "template_0.png", token)
    assert ws.mask("template_0.png", "head").sum() == 10 * 30
    assert ws.mask("template_0.png", "wing") is None
    assert [caption for _, caption in review] == ["head: 300 px", "wing: no mask"]
    assert "1 of 2" in note


def test_a_fully_painted_layer_is_refused():
    value = _editor_value(50, 50, [(0, 50, 0, 50)])
    with pytest.raises(SamPalError, match="fully painted"):
        layer_masks(value, ["eye"], 50, 50)


def test_large_images_are_shrunk_for_the_editor_and_masks_map_back():
    image = np.zeros((3000, 4500, 3), np.uint8)
    small = editor_image(image)
    assert max(small.shape[:2]) == EDITOR_MAX_SIDE
    masks = layer_masks(_editor_value(*small.shape[:2], [(0, 100, 0, 100)]), ["eye"], 3000, 4500)
    assert masks["eye"].shape == (3000, 4500)
    assert abs(masks["eye"].sum() - (100 * 3000 / 1365.33) ** 2) / masks["eye"].sum() < 0.05

    full = np.zeros((3000, 4500), dtype=bool)
    full[:1500] = True  # the top half
    preview = tinted(image, full, 0)  # drawn at editor size, never at full size
    assert preview.shape == small.shape
    assert tuple(preview[10, 10]) == tuple(int(0.45 * c) for c in structure_color(0))
    assert tuple(preview[-10, -10]) == (0, 0, 0)
    leg = np.zeros((3000, 4500), dtype=bool)
    leg[2000, 100:4000] = True  # 1 px wide, on a row a nearest-pixel shrink skips
    assert (tinted(image, leg, 0).any(axis=2)).sum() > 1000


def test_sessions_are_isolated_and_tokens_re_attach(tmp_path):
    workspaces = Workspaces(tmp_path)
    first, ws1 = workspaces.get(None)
    second, ws2 = workspaces.get(None)
    assert first != second and ws1.root != ws2.root
    assert workspaces.get(first)[1].root == ws1.root
    assert workspaces.get("../../etc")[0] != "../../etc"  # forged tokens get a fresh workspace


def test_idle_sessions_are_removed_by_a_sweep_at_most_every_interval(tmp_path):
    workspaces = Workspaces(tmp_path, max_age=3600, sweep_interval=3600)
    old, old_ws = workspaces.get(None)
    kept, kept_ws = workspaces.get(None)
    two_hours_ago = time.time() - 7200
    os.utime(old_ws.root, (two_hours_ago, two_hours_ago))
    assert workspaces.get(kept)[0] == kept and old_ws.root.is_dir()  # swept on the first get only
    workspaces._next_sweep = 0.0  # the interval has passed
    assert workspaces.get(kept)[0] == kept
    assert not old_ws.root.exists() and kept_ws.root.is_dir()
    assert workspaces.get(old)[0] != old  # its token now gets a fresh workspace


def test_zip_upload_is_flattened_and_capped(tmp_path):
    archive = tmp_path / "a.zip"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../../evil.png", buffer.getvalue())
        bundle.writestr("dir/ok.png", buffer.getvalue())
        bundle.writestr("notes.txt", "x")
    target = tmp_path / "out"
    target.mkdir()
    written = extract_zip(archive, target, Limits())
    assert sorted(p.name for p in written) == ["evil.png", "ok.png"]
    assert all(p.parent == target for p in written)
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as bundle:  # drawers of a collection, each with IMG_1
        bundle.writestr("drawer1/IMG_1.png", buffer.getvalue())
        bundle.writestr("drawer2/IMG_1.png", buffer.getvalue())
        bundle.writestr("spécimen 2.png", buffer.getvalue())
    (target / "b").mkdir()
    written = extract_zip(tmp_path / "b.zip", target / "b", Limits())
    assert [p.name for p in written][:2] == ["IMG_1.png", "drawer2_IMG_1.png"]  # neither overwrites the other
    assert written[2].name.isascii() and " " not in written[2].name and len(set(written)) == 3
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as bundle:  # every name the fallbacks could collide on
        for name in ("b_x.png", "a/x.png", "b/x.png", "a b.png", "a_b.png"):
            bundle.writestr(name, buffer.getvalue())
    (target / "c").mkdir()
    written = extract_zip(tmp_path / "c.zip", target / "c", Limits())
    assert len(set(written)) == 5 and len(list((target / "c").iterdir())) == 5
    with pytest.raises(SamPalError, match="limit is 1"):
        extract_zip(archive, target, Limits(max_zip_files=1))
    with pytest.raises(SamPalError, match="unpacks to"):
        extract_zip(archive, target, Limits(max_zip_bytes=10))


def test_clicks_give_a_sam2_mask_that_is_accepted_into_a_structure(backend, tmp_path, collection):
    import gradio as gr

    ui = SamPalApp(CONFIG, backend, Workspaces(tmp_path))
    token, ws = ui.workspaces.get(None)
    ui.upload_templates([str(collection / "template_0.png")], token)
    ui.apply_structures("head", token)
    square = np.zeros((120, 160), dtype=bool)
    square[5:15, 5:15] = True
    ws.set_mask("template_0.png", "head", square)
    click = gr.SelectData(target=None, data={"index": [40, 60], "value": None, "selected": True})
    points, mask_path, shown, note = ui.click_point([], "inside (positive)", "template_0.png", token, click)
    assert points == [[40.0, 60.0, 1]] and note == "1 points"
    assert shown.shape[:2] == (120, 160)
    clicked = np.asarray(Image.open(mask_path)) > 0
    assert clicked.shape == (120, 160)
    points, mask_path, *_ = ui.accept_points(mask_path, "template_0.png", "head", token)
    assert points == [] and mask_path is None
    stored = ws.mask("template_0.png", "head")
    assert np.array_equal(stored, square | clicked)  # a click adds to what was drawn


def test_a_click_maps_from_the_click_image_to_the_photo_and_a_replaced_photo_is_read_again(backend, tmp_path, collection):
    import gradio as gr

    ui = SamPalApp(CONFIG, backend, Workspaces(tmp_path))
    token, ws = ui.workspaces.get(None)
    photo = tmp_path / "big.png"
    Image.open(collection / "template_0.png").resize((1600, 1200)).save(photo)
    ui.upload_templates([str(photo)], token)
    ui.apply_structures("head", token)
    click = gr.SelectData(target=None, data={"index": [512, 384], "value": None, "selected": True})
    points, mask_path, shown, _ = ui.click_point([], "inside (positive)", "big.png", token, click)
    assert points == [[800.0, 600.0, 1]] and shown.shape == (768, 1024, 3)  # the click image is at most 1024 px
    assert (np.asarray(Image.open(mask_path)) > 0).shape == (1200, 1600)
    Image.open(collection / "template_1.png").resize((800, 600)).save(ws.template_path("big.png"))
    os.utime(ws.template_path("big.png"), ns=(time.time_ns() + 10**9,) * 2)
    points, mask_path, shown, _ = ui.click_point([], "inside (positive)", "big.png", token, click)
    assert points == [[512.0, 384.0, 1]] and shown.shape == (600, 800, 3)
    assert (np.asarray(Image.open(mask_path)) > 0).shape == (600, 800)


def test_the_page_polls_every_second_only_while_a_job_of_its_session_runs(tmp_path, collection):
    from sam2pal.jobs import JobStatus

    class Held:
        """A backend whose jobs run until the test ends them."""

        def __init__(self):
            self.states = {}

        def start(self, spec):
            self.states[spec.job_id] = "running"
            return spec.job_id

        def status(self, job_id):
            return JobStatus(job_id, "predict", self.states[job_id])

    held = Held()
    ui = SamPalApp(CONFIG, held, Workspaces(tmp_path))
    token, ws = _session_with(ui, collection)
    other, _ = _session_with(ui, collection)
    assert ui.live_view(token)[-1].value == IDLE_TICK_SECONDS  # nothing started: the page's timer slows down
    ui.start_prediction("none", "none", str(IMAGE_SIZE), "random:tiny", token)
    view = ui.live_view(token)
    assert view[-1].value == BUSY_TICK_SECONDS < IDLE_TICK_SECONDS and view[5].startswith("running")
    assert ui.live_view(other)[-1].value == IDLE_TICK_SECONDS  # another session's job is not this page's
    held.states[ws.job("predict")] = "cancelled"
    assert ui.live_view(token)[-1].value == IDLE_TICK_SECONDS and ui.live_view(token)[5].startswith("cancelled")


def test_loading_the_page_starting_cancelling_and_correcting_wake_the_timer(tmp_path):
    from sam2pal.ui.app import build_app

    class Quiet:
        def describe(self):
            return "none"

    config = build_app(CONFIG, Quiet(), Workspaces(tmp_path)).config
    timer = next(c["id"] for c in config["components"] if c["type"] == "timer")
    by_id = {d["id"]: d for d in config["dependencies"]}
    woken = [by_id[d["trigger_after"]]["api_name"] for d in config["dependencies"]
             if timer in d["outputs"] and d["trigger_after"] is not None]
    assert {"attach", "start_training", "start_prediction", "apply_correction"} <= set(woken) and len(woken) == 6
    assert all(d["api_visibility"] == "private" for d in config["dependencies"] if timer in d["outputs"])


def test_importing_a_coco_file_shows_the_categories_it_skipped(tmp_path, collection):
    coco = json.loads((collection / "templates.json").read_text())
    coco["categories"].append({"id": 99, "name": "descriptron-helper"})  # what other tools add to exports
    (tmp_path / "export.json").write_text(json.dumps(coco))
    ui = SamPalApp(CONFIG, None, Workspaces(tmp_path / "ws"))
    token, ws = ui.workspaces.get(None)
    with pytest.warns(UserWarning, match="descriptron-helper"):
        text, _, _, note = ui.import_coco(str(tmp_path / "export.json"),
                                          [str(collection / f"template_{i}.png") for i in (0, 1)], token)
    assert note.startswith("Imported 2 templates with 3 structures.")
    assert "category 'descriptron-helper' (id 99) has no annotation on any template: skipped" in note
    assert "descriptron-helper" not in text.splitlines() and ws.structures == text.splitlines()


def test_the_model_is_picked_per_run_among_those_the_server_offers(tmp_path, collection):
    import gradio as gr

    class Recorder:
        def __init__(self):
            self.specs = []

        def start(self, spec):
            self.specs.append(spec)
            return spec.job_id

    recorder = Recorder()
    config = AppConfig(model="random:tiny", image_size=IMAGE_SIZE, device="cpu", models=("random:small",))
    ui = SamPalApp(config, recorder, Workspaces(tmp_path))
    token, ws = _session_with(ui, collection)
    assert ui.choices == ["random:tiny", "random:small"]
    ui.start_prediction("none", "none", "256", "random:small", token)
    assert recorder.specs[-1].model == "random:small" and recorder.specs[-1].kind == "predict"
    with pytest.raises(gr.Error, match="not offered"):
        ui.start_training(1, "lora", None, "256", "facebook/sam2.1-hiera-large", False, False, token)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_a_correction_in_the_review_updates_mask_overlay_coco_and_ranking(backend, tmp_path, collection):
    import gradio as gr

    ui = SamPalApp(CONFIG, backend, Workspaces(tmp_path))
    token, ws = _session_with(ui, collection)
    ui.start_prediction("none", "none", str(IMAGE_SIZE), "random:tiny", token)
    status = backend.wait(ws.job("predict"), timeout=300)
    assert status.state == "done", status.error
    line, gallery = ui.prediction_view(token)
    worst = gallery[0][1]

    file_name, editor, dropdown = ui.open_correction(token, None, gr.SelectData(target=None, data={"index": 0, "value": None}))
    assert worst.startswith(file_name)
    # a page that has not refreshed since a re-ranking: the caption it shows decides, not the position
    stale = {"index": 0, "value": {"image": None, "caption": gallery[1][1]}}
    assert ui.open_correction(token, None, gr.SelectData(target=None, data=stale))[0] == gallery[1][1].split(" · ")[0]
    structure = ws.structures[0]
    out = Path(status.files["report"]).parent
    entry = next(e for e in json.loads((out / "report.json").read_text())["images"] if e["file"] == file_name)
    predicted = np.asarray(Image.open(out / entry["files"]["masks"][structure])) > 0
    overlay_before = np.asarray(Image.open(out / entry["files"]["overlay"])).astype(int)
    height, width = predicted.shape
    add = np.zeros((height, width, 4), dtype=np.uint8)
    add[10:40, 10:60] = 255
    remove = np.zeros((height, width, 4), dtype=np.uint8)
    remove[100:, :] = 255
    note, *_ = ui.apply_correction({"layers": [add, remove]}, file_name, structure, False, token)

    expected = predicted.copy()
    expected[10:40, 10:60] = True
    expected[100:, :] = False
    assert note == f"{file_name}: {structure} corrected ({int(expected.sum())} px)."
    assert np.array_equal(np.asarray(Image.open(out / entry["files"]["masks"][structure])) > 0, expected)
    assert np.abs(np.asarray(Image.open(out / entry["files"]["overlay"])).astype(int) - overlay_before).max() > 50
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "predictions.json"))
    image_id = next(i["id"] for i in coco.dataset["images"] if i["file_name"] == file_name)
    category = ws.structures.index(structure) + 1
    (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=[category]))
    assert np.array_equal(coco.annToMask(annotation) > 0, expected)
    _, gallery = ui.prediction_view(token)
    caption = next(c for _, c in gallery if c.startswith(file_name))
    assert f"corrected: {structure}" in caption
    entry = next(e for e in json.loads((out / "report.json").read_text())["images"] if e["file"] == file_name)
    assert entry["structures"][structure] == {"area": int(expected.sum()), "score": None, "corrected": True}
    nothing = np.zeros((height, width, 4), dtype=np.uint8)
    for other in ws.structures[1:]:  # every structure checked by a person: the image goes last
        ui.apply_correction({"layers": [nothing, nothing]}, file_name, other, False, token)
    _, gallery = ui.prediction_view(token)
    assert gallery[-1][1].startswith(f"{file_name} · QC 1.00") and not gallery[0][1].startswith(file_name)
    coco_file, archive = ui.export(token)
    with zipfile.ZipFile(archive) as bundle:  # what the Export tab and the job_file endpoint hand out
        zipped = np.asarray(Image.open(io.BytesIO(bundle.read(entry["files"]["masks"][structure])))) > 0
    assert np.array_equal(zipped, expected)


def test_the_example_collection_loads_templates_with_structures_and_specimens(tmp_path):
    ui = SamPalApp(CONFIG, backend=None, workspaces=Workspaces(tmp_path))
    token, ws = ui.workspaces.get(None)
    structures, _, _, note, specimen_note = ui.load_example(token)
    template_set = ws.template_set()
    assert len(template_set.templates) == 2 and len(ws.specimens()) == 12
    assert structures.splitlines() == template_set.structures and len(template_set.structures) >= 3
    assert all(set(t.masks) == set(template_set.structures) for t in template_set.templates)
    assert "12 specimen images" in specimen_note and "Example collection loaded" in note


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_corrections_retrain_as_labels_and_the_table_shows_zero_shot_previous_and_new(backend, tmp_path, collection):
    import gradio as gr

    ui = SamPalApp(CONFIG, backend, Workspaces(tmp_path))
    token, ws = _session_with(ui, collection)
    assert "can be used here as labels" in ui.corrections_note(token)
    ui.start_prediction("none", "none", str(IMAGE_SIZE), "random:tiny", token)
    status = backend.wait(ws.job("predict"), timeout=300)
    assert status.state == "done", status.error
    with pytest.raises(gr.Error, match="No corrections yet"):
        ui.start_training(1, "decoder", None, str(IMAGE_SIZE), "random:tiny", True, False, token)
    out = Path(status.files["report"]).parent
    order = json.loads((out / "report.json").read_text())["review_order"]
    file_name, structure = order[0], ws.structures[0]
    height, width = np.asarray(Image.open(collection / "specimens" / file_name)).shape[:2]
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    layer[5:25, 5:45] = 255
    ui.apply_correction({"layers": [layer, np.zeros_like(layer)]}, file_name, structure, False, token)
    note = ui.corrections_note(token)
    assert "**1 corrected specimen(s)**" in note and f"Suggested next template: **{order[1]}**" in note

    assert "1 corrected specimens as labels" in ui.start_training(1, "decoder", None, str(IMAGE_SIZE), "random:tiny",
                                                                   True, False, token)
    first = backend.wait(ws.job("train"), timeout=600)
    assert first.state == "done", first.error
    adapter = Path(first.files["adapter"])
    validation = json.loads((adapter / "validation.json").read_text())
    assert validation["labels"]["trained_on"] == [file_name] and validation["labels"]["held_out"] == []
    labels = json.loads((adapter.parent / "labels.json").read_text())
    assert [a["category_id"] for a in labels["annotations"]] == [1] and labels["images"][0]["file_name"] == file_name
    steps = [json.loads(line) for line in (adapter / "train_log.jsonl").read_text().splitlines()]
    assert any(file_name in s.get("labels", []) for s in steps)  # the correction was a supervised step

    ui.start_training(1, "decoder", None, str(IMAGE_SIZE), "random:tiny", False, True, token)
    second = backend.wait(ws.job("train"), timeout=600)
    assert second.state == "done", second.error
    _, _, table, _ = ui.training_view(token)
    again = json.loads((Path(second.files["adapter"]) / "validation.json").read_text())
    assert again["init_adapter"] == str(adapter)
    zero, previous = again["epochs"][0]["base_validation_iou"], again["epochs"][0]["validation_iou"]
    assert [row[0] for row in table] == list(zero)
    assert [row[1] for row in table] == [round(zero[n], 4) for n in zero]
    assert [row[2] for row in table] == [round(previous[n], 4) for n in zero]
