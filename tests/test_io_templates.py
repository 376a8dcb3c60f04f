"""Templates from COCO files and from mask PNGs, and the messages users see when they are wrong."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from sam2pal.api import merge_templates
from sam2pal.errors import SamPalError
from sam2pal.io.masks import encode_rle
from sam2pal.io.templates import (
    Template,
    TemplateSet,
    load_coco_templates,
    load_mask_templates,
    load_templates,
    save_coco_templates,
)

WIDTH, HEIGHT = 64, 48


def _square(x: int, y: int, side: int) -> list[list[int]]:
    """COCO polygon of the pixel square [x, x+side) x [y, y+side)."""
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def _write_photo(path: Path, color: tuple[int, int, int] = (90, 60, 30)) -> None:
    Image.new("RGB", (WIDTH, HEIGHT), color).save(path)


def _coco(images: list[dict], annotations: list[dict], categories: list[dict]) -> dict:
    return {"images": images, "annotations": annotations, "categories": categories}


def _image_entry(image_id: object, file_name: str) -> dict:
    return {"id": image_id, "file_name": file_name, "width": WIDTH, "height": HEIGHT}


def _annotation(
    annotation_id: int, image_id: object, category_id: int, segmentation: object
) -> dict:
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
    }


def _write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def beetle_coco(tmp_path: Path) -> Path:
    """Two photos next to the JSON, string image ids, two 'eye' annotations on the first photo,
    and a third photo without annotations (not a template)."""
    for name in ("a.png", "b.png", "unused.png"):
        _write_photo(tmp_path / name)
    rle_leg = np.zeros((HEIGHT, WIDTH), dtype=bool)
    rle_leg[30:40, 10:20] = True
    data = _coco(
        images=[
            _image_entry("img-a", "a.png"),
            _image_entry("img-b", "b.png"),
            _image_entry("img-c", "unused.png"),
        ],
        annotations=[
            _annotation(1, "img-a", 7, _square(2, 2, 4)),
            _annotation(2, "img-a", 7, _square(50, 2, 4)),
            _annotation(3, "img-a", 3, encode_rle(rle_leg)),
            _annotation(4, "img-b", 3, _square(10, 10, 5)),
        ],
        # Listed out of id order: structures follow ascending category id.
        categories=[{"id": 7, "name": "eye"}, {"id": 3, "name": "leg"}],
    )
    return _write_json(tmp_path / "templates.json", data)


def test_coco_templates_or_annotations_of_one_category(beetle_coco: Path) -> None:
    template_set = load_coco_templates(beetle_coco)

    assert template_set.structures == ["leg", "eye"]
    assert [template.name for template in template_set.templates] == ["a.png", "b.png"]
    first = template_set.templates[0]
    assert first.path == beetle_coco.parent / "a.png"
    assert first.image.shape == (HEIGHT, WIDTH, 3)
    eye = first.masks["eye"]
    assert eye.dtype == bool and eye.shape == (HEIGHT, WIDTH)
    assert eye.sum() == 32
    assert eye[3, 3] and eye[3, 52] and not eye[3, 30]
    assert first.masks["leg"].sum() == 100
    assert set(template_set.templates[1].masks) == {"leg"}


def test_mask_stack_is_in_structure_order_with_blanks(beetle_coco: Path) -> None:
    template_set = load_coco_templates(beetle_coco)

    stack = template_set.mask_stack(1)

    assert stack.shape == (2, HEIGHT, WIDTH) and stack.dtype == bool
    assert stack[0].sum() == 25
    assert not stack[1].any()


def test_uncompressed_rle_and_int_ids(tmp_path: Path) -> None:
    _write_photo(tmp_path / "a.png")
    counts = [HEIGHT * 5, HEIGHT, HEIGHT * (WIDTH - 6)]
    data = _coco(
        [_image_entry(1, "a.png")],
        [_annotation(1, 1, 1, {"size": [HEIGHT, WIDTH], "counts": counts})],
        [{"id": 1, "name": "antenna"}],
    )

    template_set = load_coco_templates(_write_json(tmp_path / "t.json", data))

    mask = template_set.templates[0].masks["antenna"]
    assert mask.sum() == HEIGHT and mask[:, 5].all()


def test_images_found_in_template_image_dir_by_base_name(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    _write_photo(photos / "a.png")
    data = _coco(
        [_image_entry(1, "C:\\export\\job 12\\a.png")],
        [_annotation(1, 1, 1, _square(0, 0, 3))],
        [{"id": 1, "name": "eye"}],
    )

    template_set = load_coco_templates(_write_json(tmp_path / "t.json", data), image_dir=photos)

    assert template_set.templates[0].path == photos / "a.png"
    assert template_set.templates[0].name == "C:\\export\\job 12\\a.png"


def test_missing_template_image(tmp_path: Path) -> None:
    data = _coco(
        [_image_entry(1, "gone.jpg")],
        [_annotation(1, 1, 1, _square(0, 0, 3))],
        [{"id": 1, "name": "eye"}],
    )
    path = _write_json(tmp_path / "t.json", data)

    with pytest.raises(
        SamPalError,
        match=r"template image not found: gone\.jpg \(from .*t\.json; looked next to t\.json\); "
        r"put it there or pass --template-images DIR",
    ):
        load_coco_templates(path)


def test_unreadable_template_image_names_json_and_file(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_text("not a photo")
    data = _coco(
        [_image_entry(5, "a.jpg")],
        [_annotation(1, 5, 1, _square(0, 0, 3))],
        [{"id": 1, "name": "eye"}],
    )

    with pytest.raises(SamPalError, match=r"t\.json: template image 5: not an image .*a\.jpg"):
        load_coco_templates(_write_json(tmp_path / "t.json", data))


def test_category_without_annotation(tmp_path: Path) -> None:
    _write_photo(tmp_path / "a.png")
    data = _coco(
        [_image_entry(1, "a.png")],
        [_annotation(1, 1, 1, _square(0, 0, 3))],
        [{"id": 1, "name": "eye"}, {"id": 2, "name": "wing"}],
    )

    templates = load_coco_templates(_write_json(tmp_path / "t.json", data))  # CVAT keeps unused labels
    assert templates.structures == ["eye"]
    assert any("category 'wing' (id 2) has no annotation on any template: skipped" in w for w in templates.warnings)
    merged = merge_templates(templates, templates)  # the warnings survive merging template files
    assert [w for w in merged.warnings if "'wing'" in w]


def test_empty_annotation_mask(tmp_path: Path) -> None:
    _write_photo(tmp_path / "a.png")
    empty = encode_rle(np.zeros((HEIGHT, WIDTH), dtype=bool))
    data = _coco(
        [_image_entry(1, "a.png")],
        [_annotation(1, 1, 1, _square(0, 0, 3)), _annotation(9, 1, 1, empty)],
        [{"id": 1, "name": "eye"}],
    )

    with pytest.raises(
        SamPalError,
        match=r"t\.json: annotation 9 \('eye' on image 1, a\.png\) has an empty mask; redraw it "
        r"or delete the annotation",
    ):
        load_coco_templates(_write_json(tmp_path / "t.json", data))


def test_malformed_segmentation(tmp_path: Path) -> None:
    _write_photo(tmp_path / "a.png")
    data = _coco(
        [_image_entry(1, "a.png")],
        [_annotation(4, 1, 1, {"size": [HEIGHT, WIDTH], "counts": [5, 5]})],
        [{"id": 1, "name": "eye"}],
    )

    with pytest.raises(SamPalError, match=r"annotation 4 .* malformed segmentation: RLE counts"):
        load_coco_templates(_write_json(tmp_path / "t.json", data))


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (_annotation(3, 99, 1, _square(0, 0, 3)), r"annotation 3 refers to image id 99"),
        (_annotation(3, 1, 42, _square(0, 0, 3)), r"annotation 3 refers to category id 42"),
    ],
)
def test_unknown_references(tmp_path: Path, annotation: dict, message: str) -> None:
    _write_photo(tmp_path / "a.png")
    data = _coco(
        [_image_entry(1, "a.png")],
        [_annotation(1, 1, 1, _square(0, 0, 3)), annotation],
        [{"id": 1, "name": "eye"}],
    )

    with pytest.raises(SamPalError, match=rf"t\.json: {message}.*; fix the annotation"):
        load_coco_templates(_write_json(tmp_path / "t.json", data))


def test_not_coco_json(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "labels.json", {"images": [], "shapes": []})

    with pytest.raises(
        SamPalError,
        match=r"labels\.json is not a COCO annotation file: it needs top-level 'images', "
        r"'annotations' and 'categories' lists \(missing: annotations, categories\)",
    ):
        load_coco_templates(path)


def test_invalid_json_and_missing_json(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')

    with pytest.raises(SamPalError, match=r"broken\.json is not valid JSON \(line 1"):
        load_coco_templates(broken)
    with pytest.raises(SamPalError, match=r"template file not found: .*nope\.json; check the path"):
        load_coco_templates(tmp_path / "nope.json")


def test_image_size_differs_from_coco(tmp_path: Path) -> None:
    _write_photo(tmp_path / "a.png")
    entry = {"id": 1, "file_name": "a.png", "width": 640, "height": 480}
    data = _coco([entry], [_annotation(1, 1, 1, _square(0, 0, 3))], [{"id": 1, "name": "eye"}])

    with pytest.raises(
        SamPalError,
        match=r"t\.json: image 1 \(a\.png\) is 64x48 pixels but the COCO file says 640x480",
    ):
        load_coco_templates(_write_json(tmp_path / "t.json", data))


def test_save_and_load_round_trip(beetle_coco: Path, tmp_path: Path) -> None:
    original = load_coco_templates(beetle_coco)
    saved = tmp_path / "out" / "saved.json"

    save_coco_templates(original, saved)
    reloaded = load_coco_templates(saved, image_dir=beetle_coco.parent)

    assert reloaded.structures == original.structures
    assert len(reloaded.templates) == len(original.templates)
    for before, after in zip(original.templates, reloaded.templates):
        assert after.name == before.name
        assert np.array_equal(after.image, before.image)
        assert after.masks.keys() == before.masks.keys()
        for name in before.masks:
            assert np.array_equal(after.masks[name], before.masks[name])
    assert [p.name for p in saved.parent.iterdir()] == ["saved.json"]


def test_mask_templates_from_pngs(tmp_path: Path) -> None:
    _write_photo(tmp_path / "photo.jpg")
    gray = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    gray[5:10, 5:15] = 1
    Image.fromarray(gray).save(tmp_path / "eye.png")
    rgba = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[20:30, 20:30, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "leg.png")
    blue = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    blue[40:42, 0:3] = (0, 0, 1)
    Image.fromarray(blue).save(tmp_path / "wing.png")

    template_set = load_mask_templates(
        tmp_path / "photo.jpg",
        {
            "eye": tmp_path / "eye.png",
            "leg": str(tmp_path / "leg.png"),
            "wing": tmp_path / "wing.png",
        },
    )

    assert template_set.structures == ["eye", "leg", "wing"]
    template = template_set.templates[0]
    assert template.name == "photo.jpg"
    assert template.masks["eye"].sum() == 50
    assert template.masks["leg"].sum() == 100 and template.masks["leg"][25, 25]
    assert template.masks["wing"].sum() == 6
    assert template_set.mask_stack(0).shape == (3, HEIGHT, WIDTH)


def test_mask_template_errors(tmp_path: Path) -> None:
    _write_photo(tmp_path / "photo.png")
    Image.new("L", (32, 24), 255).save(tmp_path / "small.png")
    Image.new("L", (WIDTH, HEIGHT), 0).save(tmp_path / "blank.png")

    with pytest.raises(SamPalError, match=r"mask for 'eye': image not found: .*nope\.png"):
        load_mask_templates(tmp_path / "photo.png", {"eye": tmp_path / "nope.png"})
    with pytest.raises(
        SamPalError,
        match=r"mask for 'eye' is 32x24 pixels but template image .*photo\.png is 64x48: "
        r".*small\.png; export the mask at the image's full size",
    ):
        load_mask_templates(tmp_path / "photo.png", {"eye": tmp_path / "small.png"})
    with pytest.raises(
        SamPalError, match=r"mask for 'eye' is empty .*blank\.png; draw the structure in it"
    ):
        load_mask_templates(tmp_path / "photo.png", {"eye": tmp_path / "blank.png"})
    with pytest.raises(SamPalError, match=r"image not found: .*absent\.png"):
        load_mask_templates(tmp_path / "absent.png", {"eye": tmp_path / "blank.png"})


def test_template_set_is_plain_data(tmp_path: Path) -> None:
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    mask = np.ones((4, 5), dtype=bool)
    template = Template(name="x.png", path=tmp_path / "x.png", image=image, masks={"b": mask})

    stack = TemplateSet(structures=["a", "b"], templates=[template]).mask_stack(0)

    assert stack.shape == (2, 4, 5)
    assert not stack[0].any() and stack[1].all()


def _rle_square(x: int, y: int, side: int, height: int = HEIGHT, width: int = WIDTH) -> dict:
    """Uncompressed RLE (column-major runs), as CVAT and Descriptron write masks."""
    mask = np.zeros((height, width), dtype=bool)
    mask[y : y + side, x : x + side] = True
    flat = mask.T.ravel()
    changes = np.flatnonzero(np.diff(flat.astype(int))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": [height, width], "counts": ([0] if flat[0] else []) + runs}


def test_descriptron_export(tmp_path: Path) -> None:
    """Text image ids, a .rlejson file, uncompressed RLE, a category listed twice, and
    structure_status marking a structure absent (one category is absent everywhere)."""
    _write_photo(tmp_path / "a.png")
    _write_photo(tmp_path / "b.png")
    data = _coco(
        [
            {
                **_image_entry("spec-A", "a.png"),
                "structure_status": {"eye": "absent", "wing": "present"},
            },
            {
                **_image_entry("spec-B", "b.png"),
                "structure_status": {"eye": "Absent", "antenna": "absent"},
            },
        ],
        [
            {**_annotation(1, "spec-A", 1, _rle_square(2, 3, 4)), "iscrowd": 1},
            _annotation(2, "spec-B", 1, _rle_square(10, 10, 2)),
        ],
        [{"id": 1, "name": "wing"}, {"id": 2, "name": "eye"}, {"id": 1, "name": "wing"}],
    )

    template_set = load_coco_templates(_write_json(tmp_path / "specimens.rlejson", data))

    assert template_set.structures == ["wing", "eye"]
    first, second = template_set.templates
    assert first.masks["wing"].sum() == 16 and first.masks["wing"][3:7, 2:6].all()
    assert first.absent == {"eye"} and second.absent == {"eye"}
    assert "eye" not in first.masks and not template_set.mask_stack(0)[1].any()
    assert template_set.warnings == [
        f"{tmp_path / 'specimens.rlejson'}: category 1 ('wing') is listed twice; read once",
        f"{tmp_path / 'specimens.rlejson'}: image spec-B (b.png) marks 'antenna' absent, but no category "
        "has that name; ignored",
    ]


def test_annotated_structure_marked_absent_keeps_the_annotation(tmp_path: Path) -> None:
    _write_photo(tmp_path / "a.png")
    data = _coco(
        [{**_image_entry(1, "a.png"), "structure_status": {"eye": "absent"}}],
        [_annotation(4, 1, 1, _square(0, 0, 3))],
        [{"id": 1, "name": "eye"}],
    )

    template_set = load_coco_templates(_write_json(tmp_path / "t.json", data))

    assert (
        template_set.templates[0].masks["eye"].sum() == 9
        and template_set.templates[0].absent == set()
    )
    assert template_set.warnings == [
        f"{tmp_path / 't.json'}: annotation 4 ('eye' on image 1, a.png): the image marks 'eye' "
        "absent; the annotation is used"
    ]


def test_cvat_export_with_folders_in_file_names(tmp_path: Path) -> None:
    """CVAT COCO 1.0: masks as uncompressed RLE with iscrowd 1, attributes, file names with the
    task's folders; the photos sit flat in --template-images."""
    photos = tmp_path / "photos"
    photos.mkdir()
    _write_photo(photos / "a.jpg")
    (tmp_path / "export").mkdir()
    data = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "version": "",
            "year": "",
        },
        "categories": [{"id": 1, "name": "elytron", "supercategory": ""}],
        "images": [
            {
                "id": 1,
                "width": WIDTH,
                "height": HEIGHT,
                "file_name": "job_3/images/a.jpg",
                "license": 0,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": 0,
            }
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": _rle_square(5, 5, 6),
                "area": 36.0,
                "bbox": [5.0, 5.0, 6.0, 6.0],
                "iscrowd": 1,
                "attributes": {"occluded": False},
            }
        ],
    }

    template_set = load_coco_templates(
        _write_json(tmp_path / "export" / "instances_default.json", data), photos
    )

    assert template_set.templates[0].path == photos / "a.jpg"
    assert template_set.templates[0].masks["elytron"].sum() == 36
    assert template_set.warnings == []


def test_label_studio_export(tmp_path: Path) -> None:
    """Label Studio: ids from 0 (category 0 too), upload paths with a hash prefix, a rectangle
    exported as an empty segmentation, null sizes for images it could not open."""
    _write_photo(tmp_path / "beetle.png")
    _write_photo(tmp_path / "1b3e5f2a-wasp.png")
    data = {
        "images": [
            {
                "width": WIDTH,
                "height": HEIGHT,
                "id": 0,
                "file_name": "../../label-studio/media/upload/1/9f8e7d6c-beetle.png",
            },
            {"width": None, "height": None, "id": 1, "file_name": "images/wasp.png"},
        ],
        "categories": [{"id": 0, "name": "head"}, {"id": 1, "name": "leg"}],
        "annotations": [
            {
                "id": 0,
                "image_id": 0,
                "category_id": 0,
                "segmentation": _square(1, 1, 5),
                "bbox": [1, 1, 5, 5],
                "ignore": 0,
                "iscrowd": 0,
                "area": 25.0,
            },
            {
                "id": 1,
                "image_id": 0,
                "category_id": 1,
                "segmentation": [],
                "bbox": [30, 30, 8, 8],
                "ignore": 0,
                "iscrowd": 0,
                "area": 64.0,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [[20, 20, 30, 20, 30, 24, 20, 24]],
                "bbox": [20, 20, 10, 4],
                "ignore": 0,
                "iscrowd": 0,
                "area": 40.0,
            },
        ],
    }

    template_set = load_coco_templates(_write_json(tmp_path / "result.json", data))

    assert template_set.structures == ["head", "leg"]
    beetle, wasp = template_set.templates
    assert beetle.path == tmp_path / "beetle.png" and wasp.path == tmp_path / "1b3e5f2a-wasp.png"
    assert beetle.masks["head"].sum() == 25 and set(beetle.masks) == {"head"}
    assert wasp.masks["leg"].sum() == 40
    assert template_set.warnings == [
        f"{tmp_path / 'result.json'}: annotation 1 ('leg' on image 0, "
        "../../label-studio/media/upload/1/9f8e7d6c-beetle.png) has only a bounding box, no mask or "
        "polygon; skipped"
    ]


def test_template_image_with_another_extension_is_found_by_stem(tmp_path: Path) -> None:
    _write_photo(tmp_path / "a.tif")
    data = _coco(
        [_image_entry(1, "a.jpg")],
        [_annotation(1, 1, 1, _square(0, 0, 3))],
        [{"id": 1, "name": "eye"}],
    )
    path = _write_json(tmp_path / "t.json", data)

    assert load_coco_templates(path).templates[0].path == tmp_path / "a.tif"
    _write_photo(tmp_path / "a.png")
    with pytest.raises(
        SamPalError,
        match=r"template image a\.jpg \(from .*t\.json\) could be any of "
        r"a\.png, a\.tif in .*; rename the file that was annotated to a\.jpg",
    ):
        load_coco_templates(path)


def test_degenerate_polygons_are_dropped_with_a_warning(tmp_path: Path) -> None:
    _write_photo(tmp_path / "a.png")
    data = _coco(
        [_image_entry(1, "a.png")],
        [
            _annotation(1, 1, 1, [[2, 2, 6, 2, 6, 6, 2, 6], [40, 40, 41, 41]]),
            _annotation(2, 1, 2, [[10, 10]]),
            _annotation(3, 1, 2, _square(20, 20, 2)),
        ],
        [{"id": 1, "name": "eye"}, {"id": 2, "name": "leg"}],
    )

    template_set = load_coco_templates(_write_json(tmp_path / "t.json", data))

    assert template_set.templates[0].masks["eye"].sum() == 16
    assert template_set.templates[0].masks["leg"].sum() == 4
    where = f"{tmp_path / 't.json'}: annotation"
    assert template_set.warnings == [
        f"{where} 1 ('eye' on image 1, a.png): polygon part 2 has 2 points, fewer than 3; dropped",
        f"{where} 2 ('leg' on image 1, a.png): polygon part 1 has 1 point, fewer than 3; dropped",
        f"{where} 2 ('leg' on image 1, a.png) has no polygon with 3 points or more; skipped",
    ]


def test_category_whose_annotations_are_all_unusable(tmp_path: Path) -> None:
    _write_photo(tmp_path / "a.png")
    data = _coco(
        [_image_entry(1, "a.png")],
        [
            _annotation(1, 1, 1, _square(0, 0, 3)),
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [1, 1, 4, 4]},
        ],
        [{"id": 1, "name": "eye"}, {"id": 2, "name": "leg"}],
    )

    templates = load_coco_templates(_write_json(tmp_path / "t.json", data))
    assert templates.structures == ["eye"]
    assert any("category 'leg' (id 2) has no usable annotation (1 without a mask or polygon) on any template: "
               "skipped" in w for w in templates.warnings)


def test_category_ids_must_not_clash_but_names_may_repeat(tmp_path: Path) -> None:
    _write_photo(tmp_path / "a.png")
    annotations = [_annotation(1, 1, 1, _square(0, 0, 3)), _annotation(2, 1, 5, _square(10, 10, 2))]
    clash = _coco(
        [_image_entry(1, "a.png")],
        annotations,
        [{"id": 1, "name": "eye"}, {"id": 1, "name": "leg"}],
    )
    repeat = _coco(
        [_image_entry(1, "a.png")],
        annotations,
        [{"id": 1, "name": "eye"}, {"id": 5, "name": "eye"}],
    )

    with pytest.raises(
        SamPalError, match=r"t\.json: category id 1 is used for both 'eye' and 'leg'"
    ):
        load_coco_templates(_write_json(tmp_path / "t.json", clash))
    template_set = load_coco_templates(_write_json(tmp_path / "t.json", repeat))
    assert template_set.structures == ["eye"]
    assert template_set.templates[0].masks["eye"].sum() == 13
    assert template_set.warnings == [
        f"{tmp_path / 't.json'}: categories 1, 5 are all named 'eye'; their annotations are one structure"
    ]


def _rotated_photo(path: Path) -> None:
    """Stored 64x48 with EXIF orientation 6: upright it is 48x64."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.new("RGB", (WIDTH, HEIGHT), (90, 60, 30)).save(path, exif=exif.tobytes())


def test_annotations_on_the_stored_frame_of_a_rotated_photo_are_turned_upright(
    tmp_path: Path,
) -> None:
    _rotated_photo(tmp_path / "r.png")
    stored = {**_image_entry(1, "r.png"), "width": WIDTH, "height": HEIGHT}
    upright = {**_image_entry(1, "r.png"), "width": HEIGHT, "height": WIDTH}
    square = _square(0, 0, 4)  # top-left of the stored pixels: top-right once turned clockwise

    from_stored = load_coco_templates(
        _write_json(
            tmp_path / "s.json",
            _coco([stored], [_annotation(1, 1, 1, square)], [{"id": 1, "name": "eye"}]),
        )
    )
    from_upright = load_coco_templates(
        _write_json(
            tmp_path / "u.json",
            _coco([upright], [_annotation(1, 1, 1, square)], [{"id": 1, "name": "eye"}]),
        )
    )

    eye = from_stored.templates[0].masks["eye"]
    assert eye.shape == (WIDTH, HEIGHT) and eye[0:4, HEIGHT - 4 :].all() and eye.sum() == 16
    assert from_stored.warnings == [
        f"{tmp_path / 's.json'}: image 1 (r.png): the annotations are 64x48, the photo as stored before "
        "its EXIF rotation; they were turned upright with it"
    ]
    assert from_upright.templates[0].masks["eye"][0:4, 0:4].all() and from_upright.warnings == []


def test_annotation_size_fitting_neither_frame_names_both(tmp_path: Path) -> None:
    _rotated_photo(tmp_path / "r.png")
    entry = {**_image_entry(1, "r.png"), "width": 100, "height": 100}
    data = _coco([entry], [_annotation(1, 1, 1, _square(0, 0, 4))], [{"id": 1, "name": "eye"}])

    with pytest.raises(
        SamPalError,
        match=r"t\.json: image 1 \(r\.png\) is 48x64 pixels \(64x48 as stored, "
        r"before its EXIF rotation\) but the COCO file says 100x100",
    ):
        load_coco_templates(_write_json(tmp_path / "t.json", data))


def test_mask_png_on_the_stored_frame_is_turned_upright(tmp_path: Path) -> None:
    _rotated_photo(tmp_path / "r.png")
    stored = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    stored[0:4, 0:4] = 255
    Image.fromarray(stored).save(tmp_path / "eye.png")

    template_set = load_mask_templates(tmp_path / "r.png", {"eye": tmp_path / "eye.png"})

    eye = template_set.templates[0].masks["eye"]
    assert eye.shape == (WIDTH, HEIGHT) and eye[0:4, HEIGHT - 4 :].all() and eye.sum() == 16
    assert (
        len(template_set.warnings) == 1
        and "as stored before its EXIF rotation" in template_set.warnings[0]
    )


def test_absent_marks_survive_save_and_load(tmp_path: Path) -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[1:3, 1:3] = True
    template = Template(
        name="x.png", path=tmp_path / "x.png", image=image, masks={"a": mask}, absent={"b"}
    )
    original = TemplateSet(structures=["a", "b"], templates=[template])

    save_coco_templates(original, tmp_path / "t.json")
    reloaded = load_coco_templates(tmp_path / "t.json")

    assert reloaded.structures == ["a", "b"] and reloaded.templates[0].absent == {"b"}
    assert reloaded.fingerprint() == original.fingerprint()
    template.masks["a"] = ~mask
    assert TemplateSet(["a", "b"], [template]).fingerprint() != reloaded.fingerprint()


def test_load_templates_needs_exactly_one_source(tmp_path: Path, beetle_coco: Path) -> None:
    with pytest.raises(SamPalError, match=r"no templates: pass --templates"):
        load_templates()
    with pytest.raises(SamPalError, match=r"give either --templates T\.json or --template-image"):
        load_templates(beetle_coco, image=tmp_path / "a.png", masks={"eye": tmp_path / "e.png"})
    assert load_templates(beetle_coco).structures == ["leg", "eye"]
