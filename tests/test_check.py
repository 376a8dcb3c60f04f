"""`sam2pal check`: the report on templates and an image folder, and the command's exit status."""

import json
from pathlib import Path

from PIL import Image

from sam2pal.check import FileNote, check_inputs
from sam2pal.cli import main
from sam2pal.io.masks import decode_segmentation


def _areas(collection: Path, image_id: int) -> dict[str, int]:
    coco = json.loads((collection / "templates.json").read_text())
    names = {category["id"]: category["name"] for category in coco["categories"]}
    return {
        names[a["category_id"]]: int(decode_segmentation(a["segmentation"], 120, 160).sum())
        for a in coco["annotations"]
        if a["image_id"] == image_id
    }


def _add_bad_files(specimens: Path) -> None:
    whole = (specimens / "specimen_0000.jpg").read_bytes()
    (specimens / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (specimens / "notes.txt").write_text("collected 1954")
    Image.new("RGB", (200, 150)).save(specimens / "huge.png")


def test_check_reports_templates_images_and_files_left_out(collection: Path) -> None:
    _add_bad_files(collection / "specimens")

    report = check_inputs(
        collection / "templates.json", images=collection / "specimens", max_pixels=25_000
    )

    assert report.usable and report.problems == [] and report.warnings == []
    assert report.structures == ["head", "wing", "eye"]
    assert [(t.name, t.width, t.height) for t in report.templates] == [
        ("template_0.png", 160, 120),
        ("template_1.png", 160, 120),
    ]
    assert report.templates[0].areas == _areas(collection, 1)
    assert report.templates[1].areas == _areas(collection, 2)
    assert report.images == ["specimen_0000.jpg", "specimen_0001.jpg", "specimen_0002.jpg"]
    assert [note.file for note in report.unreadable] == ["cut.jpg", "huge.png"]
    assert "truncated or corrupt" in report.unreadable[0].message
    assert "30,000 pixels (200x150), over the cap of 25,000" in report.unreadable[1].message
    assert report.skipped == [
        FileNote(
            "notes.txt",
            "not an image file (.txt); only .jpg, .jpeg, .png, .tif, "
            ".tiff, .bmp, .webp files are read",
        )
    ]
    assert report.to_dict()["usable"] is True


def test_check_collects_problems_instead_of_raising(collection: Path, tmp_path: Path) -> None:
    (collection / "template_1.png").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()

    report = check_inputs(collection / "templates.json", images=empty)

    assert not report.usable
    assert len(report.problems) == 2
    assert report.problems[0].startswith("template image not found: template_1.png")
    assert report.problems[1].startswith(
        f"no images (.jpg, .jpeg, .png, .tif, .tiff, .bmp, .webp) in {empty}"
    )


def test_check_warns_about_what_templates_lose(tmp_path: Path) -> None:
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[4, 4, 8, 4, 8, 8, 4, 8]]},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [], "bbox": [20, 20, 5, 5]},
        ],
        "categories": [{"id": 1, "name": "eye"}],
    }
    (tmp_path / "t.json").write_text(json.dumps(coco))

    report = check_inputs(tmp_path / "t.json")

    assert report.usable and report.images_folder is None
    assert report.templates[0].areas == {"eye": 16}
    assert report.warnings == [
        f"{tmp_path / 't.json'}: annotation 2 ('eye' on image 1, a.png) has only a "
        "bounding box, no mask or polygon; skipped"
    ]


def test_check_command(collection: Path, capsys) -> None:
    _add_bad_files(collection / "specimens")
    args = [
        "check",
        "--templates",
        str(collection / "templates.json"),
        "--images",
        str(collection / "specimens"),
    ]

    assert main([*args, "--max-pixels", "25000"]) == 0
    out = capsys.readouterr().out.splitlines()
    head, wing, eye = (_areas(collection, 1)[name] for name in ("head", "wing", "eye"))
    assert out[0] == "templates: 2, structures: head, wing, eye"
    assert (
        out[1] == f"  template_0.png (160x120): head {head:,} px, wing {wing:,} px, eye {eye:,} px"
    )
    assert (
        out[3]
        == f"images in {collection / 'specimens'}: 3 readable, 2 unreadable, 1 other files skipped"
    )
    assert out[-1] == "usable: yes"

    (collection / "templates.json").write_text("{")
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == "usable: no (problems: 1)"
    assert captured.err.startswith("error: ") and "templates.json is not valid JSON" in captured.err
