"""Output folder of a run: atomic writes, mask PNGs, overlays, COCO predictions and report."""

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sam2pal.errors import SamPalError
from sam2pal.io.corrections import replace_mask
from sam2pal.io.boxmask import BoxMask
from sam2pal.io.files import atomic_file, atomic_save_image, atomic_write_bytes, atomic_write_json, writer_threads
from sam2pal.io.masks import decode_segmentation
from sam2pal.io.outputs import PredictionWriter
from sam2pal.io.records import OutputOptions
from sam2pal.io.overlays import STRUCTURE_COLORS, overlay, structure_color
from sam2pal.io.run_report import RunReport

WIDTH, HEIGHT = 64, 48


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_structure_colors_are_distinct_and_cycle() -> None:
    assert len(STRUCTURE_COLORS) >= 12
    assert len(set(STRUCTURE_COLORS)) == len(STRUCTURE_COLORS)
    assert structure_color(0) == STRUCTURE_COLORS[0]
    assert structure_color(len(STRUCTURE_COLORS) + 2) == STRUCTURE_COLORS[2]


def test_atomic_writes_replace_and_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "data.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    atomic_save_image(tmp_path / "pic.PNG", Image.new("L", (3, 2), 9))

    assert target.read_bytes() == b"new"
    assert (tmp_path / "a.json").read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'
    with Image.open(tmp_path / "pic.PNG") as image:
        assert image.format == "PNG" and image.getpixel((0, 0)) == 9
    assert _files(tmp_path) == ["a.json", "pic.PNG", "sub/data.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_json(target, {"ok": True})

    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    with pytest.raises(ValueError, match="no image format"):
        atomic_save_image(tmp_path / "pic.xyz", Image.new("L", (3, 2)))

    assert json.loads(target.read_text()) == {"ok": True}
    assert _files(tmp_path) == ["a.json"]


def test_overlay_tints_outlines_and_draws_legend() -> None:
    image = np.full((HEIGHT, WIDTH, 3), 100, dtype=np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[20:40, 30:60] = True

    result = overlay(image, [mask], ["eye"])

    assert (image == 100).all()

    assert result.mode == "RGB" and result.size == (WIDTH, HEIGHT)
    pixels = np.asarray(result)
    tint = np.array([100, 100, 100]) * 0.55 + np.array(STRUCTURE_COLORS[0]) * 0.45
    assert np.abs(pixels[30, 45] - tint).max() <= 1.5
    assert tuple(pixels[20, 45]) == STRUCTURE_COLORS[0]
    assert tuple(pixels[45, 10]) == (100, 100, 100)
    legend = pixels[:20, :20].reshape(-1, 3)
    assert any(tuple(pixel) == STRUCTURE_COLORS[0] for pixel in legend)


def test_overlay_without_structures_is_the_photo() -> None:
    image = np.random.default_rng(2).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)

    assert np.array_equal(np.asarray(overlay(image, [], [])), image)


def test_overlay_on_large_image_with_many_structures() -> None:
    image = np.zeros((1200, 900, 3), dtype=np.uint8)
    masks = [np.zeros((1200, 900), dtype=bool) for _ in range(14)]
    for index, mask in enumerate(masks):
        mask[index * 80 : index * 80 + 50, 300:800] = True

    result = overlay(image, masks, [f"structure {index}" for index in range(14)])

    assert result.size == (900, 1200)
    # Outline is 2 px at this size (min side 900 / 400): the row 2 px in is tint, not outline.
    pixels = np.asarray(result)
    assert tuple(pixels[80, 500]) == STRUCTURE_COLORS[1]
    assert tuple(pixels[81, 500]) == STRUCTURE_COLORS[1]
    assert tuple(pixels[82, 500]) != STRUCTURE_COLORS[1]


@pytest.fixture
def run_folder(tmp_path: Path) -> tuple[Path, dict, np.ndarray]:
    """A writer run over two photos (one failed), closed; returns out dir, report, first masks."""
    image = np.full((HEIGHT, WIDTH, 3), 200, dtype=np.uint8)
    masks = np.zeros((3, HEIGHT, WIDTH), dtype=bool)
    masks[0, 5:15, 10:30] = True
    masks[0, 30:33, 40:41] = True
    masks[2, 0:HEIGHT, 0:2] = True
    out_dir = tmp_path / "run"
    writer = PredictionWriter(out_dir, ["eye", "fore/wing", "leg"], {"model": "tiny"})

    writer.add(Path("/photos/beetle 1.jpg"), image, masks, scores=[0.9, 0.1, 0.75], seconds=1.5)
    writer.add_failure(Path("/photos/broken.jpg"), "cannot decode image broken.jpg")
    writer.add(Path("/photos/beetle 2.png"), image, masks[[2, 1, 0]])
    report = writer.close()
    return out_dir, report, masks


def test_prediction_writer_files(run_folder: tuple[Path, dict, np.ndarray]) -> None:
    out_dir, _, masks = run_folder

    assert _files(out_dir) == [
        ".records/beetle 1.json",
        ".records/beetle 2.json",
        ".records/run.json",
        "masks/beetle 1__eye.png",
        "masks/beetle 1__fore_wing.png",
        "masks/beetle 1__leg.png",
        "masks/beetle 2__eye.png",
        "masks/beetle 2__fore_wing.png",
        "masks/beetle 2__leg.png",
        "overlays/beetle 1.jpg",
        "overlays/beetle 2.jpg",
        "predictions.json",
        "report.json",
    ]
    with Image.open(out_dir / "masks" / "beetle 1__eye.png") as png:
        assert png.mode == "1" and png.size == (WIDTH, HEIGHT)  # 1-bit: small and fast at 24 MP
        assert np.array_equal(np.asarray(png), masks[0])
    with Image.open(out_dir / "masks" / "beetle 1__fore_wing.png") as png:
        assert not np.asarray(png).any()
    with Image.open(out_dir / "overlays" / "beetle 1.jpg") as jpeg:
        assert jpeg.format == "JPEG" and jpeg.size == (WIDTH, HEIGHT)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_predictions_load_in_pycocotools(run_folder: tuple[Path, dict, np.ndarray]) -> None:
    out_dir, _, masks = run_folder
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out_dir / "predictions.json"))

    assert [category["name"] for category in coco.dataset["categories"]] == [
        "eye",
        "fore/wing",
        "leg",
    ]
    assert coco.dataset["info"]["model"] == "tiny"
    assert "date_created" in coco.dataset["info"]
    file_names = [image["file_name"] for image in coco.dataset["images"]]
    assert file_names == ["beetle 1.jpg", "beetle 2.png"]
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [annotation["category_id"] for annotation in first] == [1, 3]
    eye = first[0]
    assert isinstance(eye["segmentation"]["counts"], str)
    assert eye["area"] == 203 and eye["bbox"] == [10.0, 5.0, 31.0, 28.0]
    assert eye["score"] == pytest.approx(0.9) and eye["iscrowd"] == 0
    assert np.array_equal(coco.annToMask(eye).astype(bool), masks[0])
    second = coco.loadAnns(coco.getAnnIds(imgIds=[2]))
    assert second and all("score" not in annotation for annotation in second)


def test_report_counts_and_entries(run_folder: tuple[Path, dict, np.ndarray]) -> None:
    out_dir, report, _ = run_folder

    assert json.loads((out_dir / "report.json").read_text()) == report
    assert report["structures"] == ["eye", "fore/wing", "leg"]
    assert report["n_ok"] == 2 and report["n_failed"] == 1
    first, failed, second = report["images"]
    assert first == {
        "file": "beetle 1.jpg",
        "status": "ok",
        "error": None,
        "seconds": 1.5,
        "structures": {
            "eye": {"area": 203, "score": 0.9},
            "fore/wing": {"area": 0, "score": 0.1},
            "leg": {"area": 96, "score": 0.75},
        },
        "files": {  # the names as written, "/" cleaned out, for readers such as the web app
            "masks": {"eye": "masks/beetle 1__eye.png", "fore/wing": "masks/beetle 1__fore_wing.png",
                      "leg": "masks/beetle 1__leg.png"},
            "overlay": "overlays/beetle 1.jpg",
        },
    }
    assert all((out_dir / name).is_file() for name in [*first["files"]["masks"].values(), first["files"]["overlay"]])
    assert failed == {
        "file": "broken.jpg",
        "status": "failed",
        "error": "cannot decode image broken.jpg",
        "seconds": None,
        "structures": {},
    }
    assert second["structures"]["eye"] == {"area": 96, "score": None}


def test_the_run_report_reads_back_what_the_writer_wrote(run_folder: tuple[Path, dict, np.ndarray]) -> None:
    out_dir, report, _ = run_folder
    run = RunReport.read(out_dir)
    assert run.data == report and run.structures == ["eye", "fore/wing", "leg"] and not run.polygons
    assert run.mask_files("beetle 1.jpg")["fore/wing"] == out_dir / "masks/beetle 1__fore_wing.png"
    assert [e["file"] for e in run.segmented()] == ["beetle 1.jpg", "beetle 2.png"]
    files = run.result_files()
    assert files[:2] == ["predictions.json", "report.json"] and "overlays/beetle 2.jpg" in files
    with pytest.raises(SamPalError, match="broken.jpg has no segmentation"):
        run.entry("broken.jpg")
    (out_dir / "report.json").write_text("{not json")
    with pytest.raises(SamPalError, match="report.json is missing or damaged"):
        RunReport.read(out_dir)


def test_output_file_names_never_collide(tmp_path: Path) -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    masks = np.ones((3, HEIGHT, WIDTH), dtype=bool)
    writer = PredictionWriter(tmp_path, ["a b", "a/b", "../"], {})

    writer.add(Path("x.jpg"), image, masks)
    writer.add(Path("x.png"), image, masks)
    report = writer.close()

    assert _files(tmp_path / "masks") == [
        "x__a_b.png",
        "x__a_b_2.png",
        "x__structure3.png",
        "x_png__a_b.png",
        "x_png__a_b_2.png",
        "x_png__structure3.png",
    ]
    assert _files(tmp_path / "overlays") == ["x.jpg", "x_png.jpg"]
    assert list(report["images"][0]["structures"]) == ["a b", "a/b", "../"]


def test_masks_must_match_the_image(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path, ["eye", "leg"], {})
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)

    with pytest.raises(ValueError, match=r"1 masks for a.jpg, expected 2"):
        writer.add(Path("a.jpg"), image, np.zeros((1, HEIGHT, WIDTH), dtype=bool))
    with pytest.raises(ValueError, match=r"a.jpg .* must share the image's size and proportions"):
        writer.add(Path("a.jpg"), image, np.zeros((2, HEIGHT, HEIGHT), dtype=bool))


def test_masks_made_by_a_callable_are_made_on_a_writer_thread_and_written_alike(tmp_path: Path) -> None:
    """A prediction hands the writer a callable (Prediction.boxes) so the model's thread never
    upsamples; the files and the COCO file are those of masks given whole."""
    import threading

    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    masks = np.zeros((2, HEIGHT, WIDTH), dtype=bool)
    masks[0, 5:20, 10:30] = True
    masks[1, 30:40, 2:9] = True
    made_on: list[str] = []

    def boxes() -> list[BoxMask]:
        made_on.append(threading.current_thread().name)
        return [BoxMask.from_dense(mask) for mask in masks]

    outputs = {}
    for name, given in (("whole", masks), ("deferred", boxes)):
        writer = PredictionWriter(tmp_path / name, ["eye", "leg"], {})
        writer.add(Path("a.jpg"), image, given, [0.9, 0.8])
        writer.close()
        folder = tmp_path / name
        outputs[name] = {path: np.asarray(Image.open(folder / path)).tolist() for path in _files(folder)
                         if path.startswith(("masks", "overlays"))}
        outputs[name]["annotations"] = json.loads((folder / "predictions.json").read_text())["annotations"]
    assert made_on and all(name.startswith("sam2pal-write") for name in made_on)
    assert outputs["deferred"] == outputs["whole"]
    assert len(outputs["deferred"]) == 4 and outputs["deferred"]["annotations"][1]["area"] == 70


@pytest.mark.parametrize("cpus, threads", [(1, 2), (2, 2), (6, 3), (16, 8), (96, 8)])
def test_writers_are_half_the_cpus_this_process_may_use_two_to_eight(monkeypatch, cpus, threads) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert writer_threads() == threads


def test_wrong_masks_from_a_callable_stop_the_run_at_the_next_flush(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path, ["eye", "leg"], {})
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    writer.add(Path("a.jpg"), image, lambda: [BoxMask.empty(HEIGHT, WIDTH)])
    with pytest.raises(ValueError, match=r"1 masks for a.jpg, expected 2"):
        writer.flush()
    assert not (tmp_path / ".records" / "a.json").exists()


def test_image_decoded_smaller_gives_a_review_size_overlay_and_full_size_masks(tmp_path: Path) -> None:
    """The writer takes the photo as load_photo decodes it (smaller, same proportions) with
    full-size masks: masks and COCO stay full size, the overlay is composited at review size."""
    masks = np.zeros((1, 300, 400), dtype=bool)
    masks[0, 100:200, 50:90] = True
    preview = np.full((150, 200, 3), 90, dtype=np.uint8)
    writer = PredictionWriter(tmp_path, ["eye"], {}, options=OutputOptions(overlay_size=100))
    writer.add(Path("a.jpg"), preview, [BoxMask.from_dense(masks[0])])
    writer.close()

    with Image.open(tmp_path / "masks" / "a__eye.png") as png:
        assert png.size == (400, 300) and np.array_equal(np.asarray(png), masks[0])
    with Image.open(tmp_path / "overlays" / "a.jpg") as jpeg:
        assert jpeg.size == (100, 75)
        tinted = np.asarray(jpeg)[37, 17]  # the mask's centre at 1/4 scale
    assert tinted[0] > tinted[1] + 30  # the first structure's colour is red
    coco = json.loads((tmp_path / "predictions.json").read_text())
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (400, 300)
    assert np.array_equal(decode_segmentation(coco["annotations"][0]["segmentation"], 300, 400), masks[0])


def test_masks_none_writes_no_png_and_keeps_the_coco(tmp_path: Path) -> None:
    masks = np.zeros((2, HEIGHT, WIDTH), dtype=bool)
    masks[0, 3:9, 4:20] = True
    writer = PredictionWriter(tmp_path, ["eye", "leg"], {}, options=OutputOptions(masks="none"))
    writer.add(Path("a.jpg"), np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8), masks)
    report = writer.close()

    assert not (tmp_path / "masks").exists()
    assert report["images"][0]["files"] == {"masks": {}, "overlay": "overlays/a.jpg"}
    coco = json.loads((tmp_path / "predictions.json").read_text())
    assert [a["area"] for a in coco["annotations"]] == [96]
    with pytest.raises(SamPalError, match="--masks 'tif'"):
        OutputOptions(masks="tif")


def test_close_raises_when_predictions_do_not_decode_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = PredictionWriter(tmp_path, ["eye"], {})
    masks = np.zeros((1, HEIGHT, WIDTH), dtype=bool)
    masks[0, :4, :4] = True
    monkeypatch.setattr(BoxMask, "area", lambda self: 17)
    writer.add(Path("a.jpg"), np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8), masks)

    with pytest.raises(RuntimeError, match=r"annotation 1 decodes to 16 pixels, expected 17"):
        writer.close()


def test_atomic_file_keeps_nothing_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "out.zip") as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("interrupted")

    assert _files(tmp_path) == []


def _masks(seed: int) -> np.ndarray:
    masks = np.zeros((2, HEIGHT, WIDTH), dtype=bool)
    masks[0, seed : seed + 5, 10:20] = True
    masks[1, 30:40, seed : seed + 3] = True
    return masks


IMAGE = np.full((HEIGHT, WIDTH, 3), 120, dtype=np.uint8)
IDENTITY = {"model": "tiny", "templates_sha256": "abc"}


def _writer(out_dir: Path, identity: dict = IDENTITY, **options: bool) -> PredictionWriter:
    return PredictionWriter(
        out_dir, ["eye", "leg"], {"model": "tiny"}, identity, OutputOptions(**options)
    )


def _images_in(out_dir: Path) -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out_dir / "predictions.json"))
    return [image["file_name"] for image in coco.dataset["images"]]


def test_a_second_run_completes_the_first(tmp_path: Path) -> None:
    first = _writer(tmp_path)
    first.add(Path("a.jpg"), IMAGE, _masks(1))
    first.add(Path("b.jpg"), IMAGE, _masks(2))
    first.close()
    a_mask_time = (tmp_path / "masks" / "a__eye.png").stat().st_mtime_ns

    second = _writer(tmp_path)
    todo = [p for p in (Path("a.jpg"), Path("b.jpg"), Path("c.jpg")) if not second.is_done(p)]
    for path in todo:
        second.add(path, IMAGE, _masks(3))
    report = second.close()

    assert todo == [Path("c.jpg")]
    assert _images_in(tmp_path) == ["a.jpg", "b.jpg", "c.jpg"]
    assert report["n_ok"] == 3 and report["n_from_earlier_runs"] == 2
    assert [entry["file"] for entry in report["images"]] == ["a.jpg", "b.jpg", "c.jpg"]
    assert (tmp_path / "masks" / "a__eye.png").stat().st_mtime_ns == a_mask_time


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_an_interrupted_run_is_completed(tmp_path: Path) -> None:
    interrupted = _writer(tmp_path)
    interrupted.add(Path("a.jpg"), IMAGE, _masks(1))
    interrupted.add(Path("b.jpg"), IMAGE, _masks(2))
    interrupted.flush()  # both images' files and records reached the disk (they are written in the background)
    del interrupted  # killed before close(): no predictions.json, no report.json
    assert not (tmp_path / "predictions.json").exists()

    resumed = _writer(tmp_path)
    assert resumed.is_done(Path("/photos/a.jpg")) and resumed.is_done(Path("b.jpg"))
    assert not resumed.is_done(Path("c.jpg"))
    resumed.add(Path("c.jpg"), IMAGE, _masks(3))
    resumed.close()

    assert _images_in(tmp_path) == ["a.jpg", "b.jpg", "c.jpg"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "predictions.json"))
    first_eye = coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[1]))[0]
    assert np.array_equal(coco.annToMask(first_eye).astype(bool), _masks(1)[0])


def test_an_image_whose_masks_were_deleted_is_done_again(tmp_path: Path) -> None:
    first = _writer(tmp_path)
    first.add(Path("a.jpg"), IMAGE, _masks(1))
    first.add(Path("b.jpg"), IMAGE, _masks(2))
    first.close()
    (tmp_path / "masks" / "b__leg.png").unlink()

    second = _writer(tmp_path)

    assert second.is_done(Path("a.jpg")) and not second.is_done(Path("b.jpg"))


def test_a_record_from_before_file_names_were_reported_is_done_again(tmp_path: Path) -> None:
    first = _writer(tmp_path)
    first.add(Path("a.jpg"), IMAGE, _masks(1))
    first.add(Path("b.jpg"), IMAGE, _masks(2))
    first.close()
    old = json.loads((tmp_path / ".records" / "b.json").read_text())
    del old["report"]["files"]  # the record format of the first landing
    (tmp_path / ".records" / "b.json").write_text(json.dumps(old))

    second = _writer(tmp_path)
    assert second.is_done(Path("a.jpg")) and not second.is_done(Path("b.jpg"))
    second.add(Path("b.jpg"), IMAGE, _masks(2))
    report = second.close()
    assert [e["files"]["overlay"] for e in report["images"]] == ["overlays/a.jpg", "overlays/b.jpg"]


def test_results_of_another_run_are_not_mixed_in(tmp_path: Path) -> None:
    _writer(tmp_path).close()

    with pytest.raises(
        SamPalError,
        match=r"holds results of another run \(different model, templates_sha256\); "
        r"pass --overwrite to replace them or choose another --out",
    ):
        _writer(tmp_path, {"model": "large", "templates_sha256": "def"})
    with pytest.raises(SamPalError, match=r"\(different structures\)"):
        PredictionWriter(tmp_path, ["eye"], {}, IDENTITY)


def test_overwrite_forgets_the_earlier_run(tmp_path: Path) -> None:
    first = _writer(tmp_path)
    first.add(Path("a.jpg"), IMAGE, _masks(1))
    first.close()

    second = _writer(tmp_path, {"model": "large"}, overwrite=True)
    assert not second.is_done(Path("a.jpg"))
    assert _files(tmp_path) == [".records/run.json"]
    second.add(Path("b.jpg"), IMAGE, _masks(2))
    second.close()

    assert _images_in(tmp_path) == ["b.jpg"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_polygons_option_writes_polygons(tmp_path: Path) -> None:
    masks = np.zeros((2, HEIGHT, WIDTH), dtype=bool)
    masks[0, 5:15, 5:15] = True
    masks[0, 8:10, 8:10] = False  # a hole: polygons cannot keep it
    masks[0, 30:32, 40:45] = True  # a second part
    writer = _writer(tmp_path, polygons=True)
    writer.add(Path("a.jpg"), IMAGE, masks)
    writer.close()

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "predictions.json"))
    (eye,) = coco.loadAnns(coco.getAnnIds())
    assert eye["segmentation"] == [
        [15.0, 5.0, 15.0, 15.0, 5.0, 15.0, 5.0, 5.0],
        [45.0, 30.0, 45.0, 32.0, 40.0, 32.0, 40.0, 30.0],
    ]
    assert eye["area"] == 106 and eye["bbox"] == [5.0, 5.0, 40.0, 27.0]
    assert coco.annToMask(eye).sum() == 110


def test_zip_bundles_the_results_and_notes_are_reported(tmp_path: Path) -> None:
    writer = _writer(tmp_path, zip=True)
    writer.add(Path("a.jpg"), IMAGE, _masks(1))
    writer.add_failure(Path("b.jpg"), "cannot decode image b.jpg")
    writer.add_note(Path("/photos/notes.txt"), "not an image file (.txt)")
    report = writer.close()

    with zipfile.ZipFile(tmp_path / "results.zip") as bundle:
        assert sorted(bundle.namelist()) == [
            "masks/a__eye.png",
            "masks/a__leg.png",
            "overlays/a.jpg",
            "predictions.json",
            "report.json",
        ]
        assert json.loads(bundle.read("report.json")) == report
    assert report["n_ok"] == 1 and report["n_failed"] == 1 and report["n_skipped"] == 1
    assert report["images"][-1] == {
        "file": "notes.txt",
        "status": "skipped",
        "error": None,
        "reason": "not an image file (.txt)",
        "seconds": None,
        "structures": {},
    }


def _quality(round_trip: float, flags: list[str]) -> dict:
    return {"round_trip_iou": round_trip, "confidence": 0.9, "area_ratio": 1.0, "flags": flags}


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_a_correction_reaches_every_file_and_survives_a_resumed_run(tmp_path: Path) -> None:
    writer = _writer(tmp_path, zip=True)
    writer.add(Path("a.jpg"), IMAGE, _masks(1), scores=[0.9, 0.2],
               quality=[_quality(0.9, []), _quality(0.1, ["low_round_trip_iou"])])
    writer.add(Path("b.jpg"), IMAGE, _masks(2), scores=[0.8, 0.7],
               quality=[_quality(0.5, []), _quality(0.6, [])])
    writer.add_failure(Path("c.jpg"), "cannot decode image c.jpg")
    assert writer.close()["review_order"] == ["a.jpg", "b.jpg"]
    overlay_before = np.asarray(Image.open(tmp_path / "overlays" / "a.jpg"))
    fixed = np.zeros((HEIGHT, WIDTH), dtype=bool)
    fixed[20:30, 40:60] = True

    replace_mask(tmp_path, "a.jpg", "leg", fixed, IMAGE)

    assert np.array_equal(np.asarray(Image.open(tmp_path / "masks" / "a__leg.png")) > 0, fixed)
    shown = np.asarray(Image.open(tmp_path / "overlays" / "a.jpg")).astype(int)
    assert np.abs(shown - overlay_before).max() > 50  # redrawn where the leg now is
    report = json.loads((tmp_path / "report.json").read_text())
    entry = report["images"][0]
    assert entry["structures"]["leg"] == {"area": 200, "score": None, "corrected": True}
    assert entry["qc_score"] == 0.9 and entry["flags"] == []  # only the eye is left to judge by
    assert report["review_order"] == ["b.jpg", "a.jpg"]
    assert [e["status"] for e in report["images"]] == ["ok", "ok", "failed"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "predictions.json"))
    (leg,) = coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[2]))
    assert np.array_equal(coco.annToMask(leg) > 0, fixed) and leg["corrected"] is True
    assert len(coco.getAnnIds()) == 4 and len({a["id"] for a in coco.dataset["annotations"]}) == 4
    with zipfile.ZipFile(tmp_path / "results.zip") as bundle:
        assert json.loads(bundle.read("report.json")) == report

    resumed = _writer(tmp_path)  # a later run into the folder rebuilds the COCO file from records
    assert resumed.is_done(Path("a.jpg"))
    resumed.close()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "predictions.json"))
    (leg,) = coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[2]))
    assert np.array_equal(coco.annToMask(leg) > 0, fixed)


def test_a_run_without_mask_pngs_is_corrected_from_its_records_at_review_size(tmp_path: Path) -> None:
    """--masks none: the other structures come from the record's run lengths; the overlay is
    redrawn at the run's overlay size from an image decoded at review size."""
    masks = np.zeros((2, 300, 400), dtype=bool)
    masks[0, 10:50, 10:50] = True
    masks[1, 200:260, 300:380] = True
    writer = PredictionWriter(tmp_path, ["eye", "leg"], {"parameters": {"overlay_size": 200}},
                              options=OutputOptions(masks="none", overlay_size=200))
    writer.add(Path("a.jpg"), np.full((150, 200, 3), 120, dtype=np.uint8), masks)
    writer.close()
    fixed = np.zeros((300, 400), dtype=bool)
    fixed[100:150, 100:250] = True

    replace_mask(tmp_path, "a.jpg", "leg", fixed, np.full((150, 200, 3), 120, dtype=np.uint8))

    assert not (tmp_path / "masks").exists()
    coco = json.loads((tmp_path / "predictions.json").read_text())
    by_category = {a["category_id"]: decode_segmentation(a["segmentation"], 300, 400) for a in coco["annotations"]}
    assert np.array_equal(by_category[1], masks[0]) and np.array_equal(by_category[2], fixed)
    with Image.open(tmp_path / "overlays" / "a.jpg") as jpeg:
        assert jpeg.size == (200, 150)
        shown = np.asarray(jpeg).astype(int)
    assert shown[62, 87, 1] > shown[62, 87, 0] + 30  # the leg (green) where it was drawn, at half scale
    with pytest.raises(SamPalError, match=r"is \(150, 200\), the photo \(300, 400\)"):
        replace_mask(tmp_path, "a.jpg", "leg", fixed[::2, ::2], np.zeros((150, 200, 3), dtype=np.uint8))


def test_an_emptied_structure_loses_its_annotation_and_polygon_runs_stay_polygons(tmp_path: Path) -> None:
    writer = _writer(tmp_path, polygons=True)
    writer.add(Path("a.jpg"), IMAGE, _masks(1))
    assert writer.close()["segmentation"] == "polygons"
    replace_mask(tmp_path, "a.jpg", "eye", np.zeros((HEIGHT, WIDTH), dtype=bool), IMAGE)
    replace_mask(tmp_path, "a.jpg", "leg", np.zeros((HEIGHT, WIDTH), dtype=bool), IMAGE)  # no annotation left
    grown = _masks(1)[1]
    grown[0:5, 0:5] = True
    replace_mask(tmp_path, "a.jpg", "leg", grown, IMAGE)

    coco = json.loads((tmp_path / "predictions.json").read_text())
    assert [a["category_id"] for a in coco["annotations"]] == [2]
    assert isinstance(coco["annotations"][0]["segmentation"], list)
    assert coco["annotations"][0]["area"] == int(grown.sum())
    assert not (np.asarray(Image.open(tmp_path / "masks" / "a__eye.png")) > 0).any()


def test_a_correction_names_what_it_cannot_find(tmp_path: Path) -> None:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    with pytest.raises(SamPalError, match="report.json is missing"):
        replace_mask(tmp_path, "a.jpg", "eye", mask, IMAGE)
    writer = _writer(tmp_path)
    writer.add(Path("a.jpg"), IMAGE, _masks(1))
    writer.add_failure(Path("b.jpg"), "cannot decode image b.jpg")
    writer.close()
    with pytest.raises(SamPalError, match="b.jpg has no segmentation"):
        replace_mask(tmp_path, "b.jpg", "eye", mask, IMAGE)
    with pytest.raises(SamPalError, match="'wing' is not one of this run's structures: eye, leg"):
        replace_mask(tmp_path, "a.jpg", "wing", mask, IMAGE)
    with pytest.raises(SamPalError, match="open the image from the gallery again"):
        replace_mask(tmp_path, "a.jpg", "eye", mask[:10], IMAGE)

    def contents() -> dict[str, bytes]:
        return {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}

    before = contents()
    (tmp_path / "predictions.json").unlink()
    with pytest.raises(SamPalError, match="predictions.json is missing"):
        replace_mask(tmp_path, "a.jpg", "eye", mask, IMAGE)
    (tmp_path / "predictions.json").write_bytes(before["predictions.json"])
    (tmp_path / ".records" / "a.json").unlink()
    with pytest.raises(SamPalError, match="the record of a.jpg .* is missing"):
        replace_mask(tmp_path, "a.jpg", "eye", mask, IMAGE)
    del before[".records/a.json"]
    assert contents() == before  # checked before the first write: nothing half-updated


def test_a_large_photo_waits_for_the_model_at_its_scale_and_the_overlay_comes_from_a_second_read(tmp_path: Path) -> None:
    from sam2pal.engine.propagate import Decoding, load_specimen

    photo = tmp_path / "big.jpg"
    Image.new("RGB", (1200, 800), (200, 60, 60)).save(photo, quality=95)
    small = tmp_path / "small.jpg"
    Image.new("RGB", (600, 400), (200, 60, 60)).save(small, quality=95)
    decoding = Decoding(min_side=100, review_side=600)
    loaded = load_specimen(photo, decoding)
    assert loaded.photo.image.shape == (100, 150, 3) and loaded.photo.size == (1200, 800)  # what the model needs
    assert loaded.review().shape == (400, 600, 3)  # the overlay's copy, decoded when the writer asks
    once = load_specimen(small, decoding)
    assert once.review is None and once.photo.image.shape == (400, 600, 3)  # no larger than the review size: decoded once

    masks = np.zeros((1, 800, 1200), dtype=bool)
    masks[0, 100:300, 100:500] = True
    writer = PredictionWriter(tmp_path / "out", ["eye"], {}, options=OutputOptions(overlay_size=600))
    writer.add(photo, loaded.photo.image, masks, review=loaded.review)
    gone = load_specimen(photo, decoding)
    photo.unlink()  # removed during the run: its masks are still written, its overlay from the model's view
    writer.add(tmp_path / "gone.jpg", gone.photo.image, masks, review=gone.review)
    writer.close()
    with Image.open(tmp_path / "out" / "overlays" / "big.jpg") as first, Image.open(tmp_path / "out" / "overlays" / "gone.jpg") as second:
        assert first.size == second.size == (600, 400)  # the second drawn from the model's view, enlarged
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())["annotations"]) == 2
