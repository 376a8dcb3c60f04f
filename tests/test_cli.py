"""`sam2pal` from the shell: outputs on disk, exit codes, one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sam2pal.cli import main
from sam2pal.synthetic import draw_specimen

from conftest import IMAGE_SIZE

TINY = ["--model", "random:tiny", "--image-size", str(IMAGE_SIZE), "--device", "cpu", "--quiet"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_predict_writes_coco_masks_overlays_and_report(collection, tmp_path):
    out = tmp_path / "out"
    code = main(["predict", "--templates", str(collection / "templates.json"), "--images",
                 str(collection / "specimens"), "--out", str(out), "--batch-size", "2", *TINY])
    assert code == 0
    coco = COCO(str(out / "predictions.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["head", "wing", "eye"]
    assert len(coco.getImgIds()) == 3
    info = json.loads((out / "predictions.json").read_text())["info"]
    assert info["model"] == "random:tiny" and info["untrained_model"] is True
    assert info["parameters"]["image_size"] == IMAGE_SIZE
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert isinstance(ann["segmentation"]["counts"], str)
        assert coco.annToMask(ann).shape == (120, 160)  # the specimen's full resolution
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert len(masks) == 9 and masks[0] == "specimen_0000__eye.png"
    assert Image.open(out / "masks" / masks[0]).size == (160, 120)
    assert len(list((out / "overlays").iterdir())) == 3
    report = json.loads((out / "report.json").read_text())
    assert report["n_ok"] == 3 and report["n_failed"] == 0


def test_corrupt_specimen_is_reported_and_the_rest_written(collection, tmp_path, capsys):
    bad = collection / "specimens" / "broken.jpg"
    bad.write_bytes((collection / "specimens" / "specimen_0000.jpg").read_bytes()[:300])
    out = tmp_path / "out"
    code = main(["predict", "--templates", str(collection / "templates.json"), "--images",
                 str(collection / "specimens"), "--out", str(out), *TINY])
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["n_ok"] == 3 and report["n_failed"] == 1
    failed = [i for i in report["images"] if i["status"] == "failed"]
    assert failed[0]["file"] == "broken.jpg" and "broken.jpg" in failed[0]["error"]
    assert "broken.jpg" in capsys.readouterr().err


def test_train_then_predict_with_the_adapter(collection, tmp_path):
    adapter = tmp_path / "adapter"
    assert main(["train", "--templates", str(collection / "templates.json"), "--images", str(collection / "specimens"),
                 "--out", str(adapter), "--epochs", "1", "--steps-per-epoch", "2", "--lora-rank", "4", *TINY]) == 0
    assert (adapter / "adapter_model.safetensors").is_file()
    out = tmp_path / "out"
    assert main(["predict", "--templates", str(collection / "templates.json"), "--images",
                 str(collection / "specimens"), "--out", str(out), "--adapter", str(adapter), *TINY]) == 0
    info = json.loads((out / "predictions.json").read_text())["info"]
    assert info["adapter"]["path"] == str(adapter) and info["adapter"]["lora_rank"] == 4


def test_run_accepts_the_sam2pal_script_flags(collection, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    code = main([
        "run", "--template_json", str(collection / "templates.json"),
        "--template_image", str(collection / "template_0.png"),
        "--image_dir", str(collection / "specimens"), "--output_dir", str(out),
        "--pal_finetuning", "--use_lora", "--lora_rank", "2", "--num_epochs", "1", "--learning_rate", "1e-4",
        "--sam2_checkpoint", str(tiny_checkpoint), "--sam2_config", "configs/sam2.1/sam2.1_hiera_t.yaml",
        "--device", "cpu", "--image-size", str(IMAGE_SIZE), "--steps-per-epoch", "1", "--quiet",
    ])
    assert code == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["lora_rank"] == 2 and config["mode"] == "lora"
    assert json.loads((out / "report.json").read_text())["n_ok"] == 3


def test_one_image_with_mask_pngs_as_template(collection, tmp_path):
    image, masks = draw_specimen(160, 120, 2, seed=5)
    Image.fromarray(image).save(tmp_path / "t.png")
    args = []
    for name, mask in masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"{name}.png")
        args += ["--mask", f"{name}={tmp_path / f'{name}.png'}"]
    out = tmp_path / "out"
    assert main(["predict", "--template-image", str(tmp_path / "t.png"), *args, "--images",
                 str(collection / "specimens"), "--out", str(out), *TINY]) == 0
    assert json.loads((out / "report.json").read_text())["structures"] == ["head", "wing"]


def _coco(collection) -> dict:
    return json.loads((collection / "templates.json").read_text())


def _write(collection, data) -> str:
    path = collection / "edited.json"
    path.write_text(json.dumps(data))
    return str(path)


BAD_INPUTS = {
    "missing template image": (lambda c: (c / "template_1.png").unlink() or str(c / "templates.json"), "template_1.png"),
    "empty mask": (lambda c: _write(c, {**_coco(c), "annotations": [
        {**a, "segmentation": {"size": [120, 160], "counts": [19200]}} if a["id"] == 1 else a
        for a in _coco(c)["annotations"]]}), "empty"),
    "not coco": (lambda c: _write(c, {"hello": "world"}), "edited.json"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_template_input_is_one_line_naming_the_problem(case, collection, tmp_path, capsys):
    make, fragment = BAD_INPUTS[case]
    templates = make(collection)
    code = main(["predict", "--templates", templates, "--images", str(collection / "specimens"),
                 "--out", str(tmp_path / "out"), *TINY])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("error: ") and fragment in line


def test_a_category_nobody_annotated_is_a_warning_and_the_run_goes_on(collection, tmp_path, capsys):
    templates = _write(collection, {**_coco(collection),
                                    "categories": _coco(collection)["categories"] + [{"id": 9, "name": "scape"}]})
    code = main(["predict", "--templates", templates, "--images", str(collection / "specimens"),
                 "--out", str(tmp_path / "out"), *TINY])
    assert code == 0
    assert "category 'scape' (id 9) has no annotation on any template: skipped" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["structures"] == ["head", "wing", "eye"]


def test_image_folder_without_images(collection, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    code = main(["predict", "--templates", str(collection / "templates.json"), "--images", str(empty),
                 "--out", str(tmp_path / "out"), *TINY])
    assert code == 2 and str(empty) in _error_line(capsys)


def test_image_size_must_be_a_multiple_of_32(collection, tmp_path, capsys):
    code = main(["predict", "--templates", str(collection / "templates.json"), "--images",
                 str(collection / "specimens"), "--out", str(tmp_path / "o"), "--model", "random:tiny",
                 "--image-size", "270", "--device", "cpu"])
    line = _error_line(capsys)
    assert code == 2 and "--image-size 270" in line and "multiple of 32" in line


def test_adapter_from_another_base_is_refused_on_the_command_line(collection, tmp_path, tiny_checkpoint, capsys):
    adapter = tmp_path / "adapter"
    main(["train", "--templates", str(collection / "templates.json"), "--images", str(collection / "specimens"),
          "--out", str(adapter), "--epochs", "1", "--steps-per-epoch", "1", "--model", "random:tiny",
          "--image-size", "128", "--device", "cpu", "--quiet"])
    code = main(["predict", "--templates", str(collection / "templates.json"), "--images",
                 str(collection / "specimens"), "--out", str(tmp_path / "o"), "--adapter", str(adapter),
                 "--model", "random:small", "--image-size", "128", "--device", "cpu", "--quiet"])
    line = _error_line(capsys)
    assert code == 2 and str(adapter) in line and "--model random:tiny" in line


def test_invalid_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--images"])
    assert exit_info.value.code == 2


def test_no_network_names_the_hub_id_and_model_path(collection, tmp_path):
    """A real subprocess, offline, with an empty cache: one clear line, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "sam2pal.cli", "predict", "--templates", str(collection / "templates.json"),
         "--images", str(collection / "specimens"), "--out", str(tmp_path / "o"), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "facebook/sam2.1-hiera-tiny" in line and "--model PATH" in line


def _specimen(seed: int) -> np.ndarray:
    return draw_specimen(160, 120, 3, seed=seed)[0]


def test_mixed_folder_gives_upright_masks_an_error_and_a_note(collection, tmp_path, capsys):
    """What a user's folder looks like: EXIF-rotated JPEG, RGBA PNG, 16-bit TIFF, CMYK JPEG,
    a truncated download and a text file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif[274] = 6  # EXIF orientation: turn 90° clockwise to view
    Image.fromarray(np.rot90(_specimen(1)).copy()).save(folder / "rotated.jpg", exif=exif.tobytes())
    rgba = np.dstack([_specimen(2)[:100, :140], np.full((100, 140), 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.fromarray((_specimen(3)[:90, :120, 0].astype(np.uint16) * 200)).save(folder / "scan.tif")
    Image.fromarray(_specimen(4)[:80, :100]).convert("CMYK").save(folder / "print.jpg")
    whole = (collection / "specimens" / "specimen_0000.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.txt").write_text("drawer 12")
    out = tmp_path / "out"

    code = main(["predict", "--templates", str(collection / "templates.json"), "--images", str(folder),
                 "--out", str(out), *TINY])

    assert code == 1
    sizes = {"rotated": (160, 120), "alpha": (140, 100), "scan": (120, 90), "print": (100, 80)}
    for stem, size in sizes.items():
        for structure in ("head", "wing", "eye"):
            with Image.open(out / "masks" / f"{stem}__{structure}.png") as mask:
                assert mask.size == size
        with Image.open(out / "overlays" / f"{stem}.jpg") as overlay:
            assert overlay.size == size
    coco = json.loads((out / "predictions.json").read_text())
    names = {"alpha.png": "alpha", "print.jpg": "print", "rotated.jpg": "rotated", "scan.tif": "scan"}
    assert {i["file_name"]: (i["width"], i["height"]) for i in coco["images"]} == {
        name: sizes[stem] for name, stem in names.items()}
    report = json.loads((out / "report.json").read_text())
    assert (report["n_ok"], report["n_failed"], report["n_skipped"]) == (4, 1, 1)
    failed = [i for i in report["images"] if i["status"] == "failed"]
    assert [i["file"] for i in failed] == ["cut.jpg"] and "truncated or corrupt" in failed[0]["error"]
    skipped = [i for i in report["images"] if i["status"] == "skipped"]
    assert [i["file"] for i in skipped] == ["notes.txt"] and skipped[0]["reason"].startswith("not an image file (.txt)")
    err = capsys.readouterr().err.splitlines()
    failures = [line for line in err if line.startswith("failed: ")]
    assert len(failures) == 1 and "cut.jpg" in failures[0]
    assert [line for line in err if line.startswith("note: ")] == ["note: skipped notes.txt: " + skipped[0]["reason"]]


def test_predict_again_into_the_same_out_only_does_what_is_missing(collection, tmp_path, monkeypatch, capsys):
    import sam2pal.api

    predicted: list[list[str]] = []
    original = sam2pal.api.predict_collection

    def spy(propagator, paths, *args, **kwargs):
        predicted.append([path.name for path in paths])
        return original(propagator, paths, *args, **kwargs)

    monkeypatch.setattr(sam2pal.api, "predict_collection", spy)
    specimens, first = collection / "specimens", tmp_path / "first"
    first.mkdir()
    for name in ("specimen_0000.jpg", "specimen_0001.jpg"):
        (first / name).write_bytes((specimens / name).read_bytes())
    Image.new("RGB", (200, 150)).save(specimens / "big.png")
    out = tmp_path / "out"
    templates = ["--templates", str(collection / "templates.json")]

    assert main(["predict", *templates, "--images", str(first), "--out", str(out), *TINY]) == 0
    kept = (out / "masks" / "specimen_0000__eye.png").stat().st_mtime_ns
    code = main(["predict", *templates, "--images", str(specimens), "--out", str(out), "--polygons", "--zip",
                 "--max-pixels", "25000", *TINY])

    assert code == 1 and predicted == [["specimen_0000.jpg", "specimen_0001.jpg"], ["big.png", "specimen_0002.jpg"]]
    assert (out / "masks" / "specimen_0000__eye.png").stat().st_mtime_ns == kept
    report = json.loads((out / "report.json").read_text())
    assert (report["n_ok"], report["n_failed"], report["n_from_earlier_runs"]) == (3, 1, 2)
    assert [i["file"] for i in report["images"]] == [f"specimen_000{i}.jpg" for i in (0, 1)] + ["big.png", "specimen_0002.jpg"]
    assert "30,000 pixels (200x150), over the cap of 25,000" in report["images"][2]["error"]
    coco = COCO(str(out / "predictions.json"))
    assert [i["file_name"] for i in coco.dataset["images"]] == [f"specimen_000{i}.jpg" for i in range(3)]
    assert coco.dataset["annotations"] and all(isinstance(a["segmentation"], list) for a in coco.dataset["annotations"])
    assert coco.dataset["info"]["parameters"]["max_pixels"] == 25000 and coco.dataset["info"]["templates_sha256"]
    with zipfile.ZipFile(out / "results.zip") as bundle:
        names = bundle.namelist()
    assert names[:2] == ["predictions.json", "report.json"] and len(names) == 2 + 3 * 3 + 3

    assert main(["predict", *templates, "--images", str(first), "--out", str(out), "--model", "random:tiny",
                 "--image-size", "128", "--device", "cpu", "--quiet"]) == 2
    assert _error_line(capsys).endswith("parameters); pass --overwrite to replace them or choose another --out")
    assert main(["predict", *templates, "--images", str(first), "--out", str(out), "--overwrite", *TINY]) == 0
    assert predicted[-1] == ["specimen_0000.jpg", "specimen_0001.jpg"]
    assert [i["file_name"] for i in json.loads((out / "predictions.json").read_text())["images"]] == [
        "specimen_0000.jpg", "specimen_0001.jpg"]
    assert not (out / "results.zip").exists() and not (out / "masks" / "specimen_0002__eye.png").exists()


def test_evaluate_command(collection, tmp_path, capsys):
    templates = str(collection / "templates.json")

    assert main(["evaluate", "--gt", templates, "--pred", templates, "--boundary-tol", "1.5",
                 "--out", str(tmp_path / "metrics")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 images matched by file name; boundary F1 within 1.5 px"
    assert [line.split()[:3] for line in out[2:5]] == [["head", "2", "1.000±0.000"], ["wing", "2", "1.000±0.000"],
                                                       ["eye", "2", "1.000±0.000"]]
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["metrics.csv", "metrics.json", "metrics.png"]

    assert main(["evaluate", "--gt", templates, "--pred", str(tmp_path / "none.json")]) == 2
    assert _error_line(capsys) == f"error: prediction file not found: {tmp_path / 'none.json'}; check the path"


def test_quality_check_and_orientation_search_reach_report_and_coco(collection, tmp_path):
    out = tmp_path / "out"
    code = main(["predict", "--templates", str(collection / "templates.json"), "--images",
                 str(collection / "specimens"), "--out", str(out), "--orientation-search", "rot4",
                 "--qc-min-iou", "1.01", *TINY])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    images = [i for i in report["images"] if i["status"] == "ok"]
    assert all(i["orientation"] in ("rot0", "rot90", "rot180", "rot270") for i in images)
    assert all("low_round_trip_iou" in i["flags"] for i in images)  # every IoU is below 1.01
    scores = {i["file"]: i["qc_score"] for i in images}
    assert report["review_order"] == sorted(scores, key=scores.get)
    qc = images[0]["structures"]["head"]["qc"]
    assert set(qc) == {"round_trip_iou", "confidence", "area_ratio", "flags"}
    annotations = json.loads((out / "predictions.json").read_text())["annotations"]
    assert all("qc_round_trip_iou" in a and "qc_flags" in a for a in annotations)


def test_no_qc_leaves_quality_fields_out(collection, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", "--templates", str(collection / "templates.json"), "--images",
                 str(collection / "specimens"), "--out", str(out), "--no-qc", *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["review_order"] == []
    assert "qc" not in report["images"][0]["structures"]["head"]


def test_bench_prints_one_row_of_timings_per_image_size(capsys):
    code = main(["bench", "--image-size", "64", "--steps", "2", "--specimens", "2", "--model", "random:tiny",
                 "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("size | "))
    (row,) = [dict(zip(header.split(" | "), line.split(" | "))) for line in out.splitlines() if line[:1].isdigit()]
    assert row["size"] == "64" and row["device"] == "cpu"
    k1, k3 = float(row["K=1 step s"]), float(row["K=3 step s"])
    assert k1 > 0 and k3 > 0 and float(row["K3/K1"]) == pytest.approx(k3 / k1, rel=0.05)  # from rounded times
    assert float(row["predict img/s"]) > 0 and float(row["videopred img/s"]) > 0
    assert float(row["peak RSS MB"]) > 100


def test_bench_scale_prints_peak_memory_per_collection_size(capsys):
    code = main(["bench", "--scale", "1", "3", "--image-size", "64", "--model", "random:tiny", "--device", "cpu"])
    assert code == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert [(row[0], row[1]) for row in rows] == [("1", "1"), ("3", "3")]  # specimens asked, written
    first, second = float(rows[0][4]), float(rows[1][4])  # peak RSS MB of each fresh process
    assert first > 100 and float(rows[1][5]) == pytest.approx(second / first, abs=5e-3)
    assert main(["bench", "--scale", "1", "--compile", "--model", "random:tiny"]) == 2  # it would be ignored


def test_compile_flag_compiles_the_image_encoder(collection, tmp_path, monkeypatch):
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append((fn.__self__.__class__.__name__, kw)) or fn)
    code = main(["predict", "--templates", str(collection / "templates.json"), "--images",
                 str(collection / "specimens"), "--out", str(tmp_path / "out"), "--compile", "--no-qc", *TINY])
    assert code == 0
    assert compiled == [("ImageEncoder", {"dynamic": False})]


def test_memory_flags_reach_the_training_config(tmp_path):
    from sam2pal.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", "--templates", "t.json", "--images", "imgs", "--out", "a",
                                      "--structures-per-pass", "1", "--low-memory", "--feature-cache-gb", "0.5",
                                      "--feature-cache-dir", str(tmp_path), "--max-pixels", "1000"])
    config = _train_config(args)
    assert (config.structures_per_pass, config.low_memory, config.cache_bytes, config.cache_dir, config.max_pixels) == (
        1, True, 2**29, tmp_path, 1000)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_big_photos_give_full_size_masks_review_size_overlays_and_the_same_coco_without_pngs(tmp_path):
    """A 3.8 MP photo: decoded for the model at its scale (and again at review size for the
    overlay), masks at full size exactly as F.interpolate makes them from the model's logits,
    1-bit PNGs equal to the COCO masks, overlays at --overlay-size."""
    import torch.nn.functional as F

    from sam2pal.engine.propagate import Decoding, Propagator, load_specimen
    from sam2pal.io.templates import load_coco_templates
    from sam2pal.model.build import load_model
    from sam2pal.synthetic.domains import write_collection

    files = write_collection(tmp_path / "c", "in-domain", seed=3, templates=1, specimens=2)
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(files.specimens.glob("*.jpg")):
        Image.open(path).resize((2400, 1600), Image.BICUBIC).save(photos / path.name, quality=90)
    args = ["predict", "--templates", str(files.templates), "--images", str(photos), "--model", "synthetic:256",
            "--device", "cpu", "--quiet", "--no-qc", "--overlay-size", "512"]
    assert main([*args, "--out", str(tmp_path / "png")]) == 0
    assert main([*args, "--out", str(tmp_path / "none"), "--masks", "none"]) == 0

    coco = json.loads((tmp_path / "png" / "predictions.json").read_text())
    assert coco["images"][0]["width"] == 2400 and coco["images"][0]["height"] == 1600
    with Image.open(tmp_path / "png" / "overlays" / "specimen_0000.jpg") as jpeg:
        assert jpeg.size == (512, 341)
    model = load_model("synthetic:256", device="cpu")
    propagator = Propagator(model, load_coco_templates(files.templates), qc=None)
    photo = load_specimen(photos / "specimen_0000.jpg", Decoding(model.image_size, 512)).photo  # as predict decodes
    assert min(photo.image.shape[:2]) == model.image_size
    logits = propagator.logits([photo.image]).low_res_logits
    expected = (F.interpolate(logits.float(), size=(1600, 2400), mode="bilinear", align_corners=False)[:, 0] > 0).numpy()
    assert expected.any()
    coco_api = COCO(str(tmp_path / "png" / "predictions.json"))
    for k, structure in enumerate(files.structures):
        with Image.open(tmp_path / "png" / "masks" / f"specimen_0000__{structure}.png") as png:
            assert png.mode == "1" and np.array_equal(np.asarray(png), expected[k])
        found = coco_api.loadAnns(coco_api.getAnnIds(imgIds=[1], catIds=[k + 1]))
        decoded = coco_api.annToMask(found[0]).astype(bool) if found else np.zeros((1600, 2400), dtype=bool)
        assert np.array_equal(decoded, expected[k])

    assert not (tmp_path / "none" / "masks").exists()
    without = json.loads((tmp_path / "none" / "predictions.json").read_text())
    assert [a["segmentation"] for a in without["annotations"]] == [a["segmentation"] for a in coco["annotations"]]
