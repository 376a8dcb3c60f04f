"""Templates from COCO files and from mask PNGs, and the messages users see when they are wrong."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2pal.errors import SamPalError
from sam2pal.io.masks import encode_rle
from sam2pal.io.templates import (
    Template,
    TemplateSet,
    load_coco_templates,
    load_mask_templates,
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

    with pytest.raises(
        SamPalError,
        match=r"t\.json: category 'wing' \(id 2\) has no annotation; annotate it .* or delete "
        r"the category",
    ):
        load_coco_templates(_write_json(tmp_path / "t.json", data))


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
