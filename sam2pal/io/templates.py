"""Template images with their annotated structures: the examples SAM2 segments new photos from.

Templates come from a COCO file (any annotation tool) or from one image plus one mask PNG per
structure. Every problem is reported as a one-line SamPalError naming the file and the image,
annotation or category at fault, because users hand-edit and re-export these files often.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from sam2pal.errors import SamPalError
from sam2pal.io.images import DEFAULT_MAX_PIXELS, load_image, open_image
from sam2pal.io.masks import decode_segmentation, encode_rle, mask_area, mask_bbox
from sam2pal.io.outputs import atomic_write_json

_COCO_LISTS = ("images", "annotations", "categories")


@dataclass
class Template:
    """One template image and the masks of the structures annotated on it."""

    name: str
    path: Path
    image: np.ndarray
    masks: dict[str, np.ndarray]


@dataclass
class TemplateSet:
    """All templates and the structures they define, in category order."""

    structures: list[str]
    templates: list[Template]

    def mask_stack(self, index: int) -> np.ndarray:
        """Bool (K, H, W) in structures order; all-False where a structure is not annotated."""
        template = self.templates[index]
        blank = np.zeros(template.image.shape[:2], dtype=bool)
        return np.stack([template.masks.get(name, blank) for name in self.structures])


def _read_coco(json_path: Path) -> dict:
    if json_path.is_dir():
        raise SamPalError(
            f"expected a COCO JSON file but got a folder: {json_path}; pass the file itself"
        )
    if not json_path.exists():
        raise SamPalError(f"template file not found: {json_path}; check the path")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise SamPalError(
            f"{json_path} is not valid JSON (not UTF-8 text); export the templates as COCO JSON"
        ) from error
    except json.JSONDecodeError as error:
        raise SamPalError(
            f"{json_path} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg}); fix the file or export it again"
        ) from error
    except OSError as error:
        raise SamPalError(
            f"cannot read {json_path} ({error.strerror}); check its permissions"
        ) from error
    missing = [
        key
        for key in _COCO_LISTS
        if not isinstance(data, dict) or not isinstance(data.get(key), list)
    ]
    if missing:
        raise SamPalError(
            f"{json_path} is not a COCO annotation file: it needs top-level 'images', "
            f"'annotations' and 'categories' lists (missing: {', '.join(missing)}); "
            "export the templates as COCO JSON"
        )
    return data


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _categories(json_path: Path, entries: list) -> dict[int, str]:
    """Category id -> name, in ascending id order."""
    names: dict[int, str] = {}
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("id"), int)
            and not isinstance(entry.get("id"), bool)
            and isinstance(entry.get("name"), str)
            and entry["name"]
        ):
            raise SamPalError(
                f"{json_path}: category {entry!r} needs an integer 'id' and a non-empty 'name'; "
                "fix the categories list"
            )
        if entry["id"] in names:
            raise SamPalError(
                f"{json_path}: category id {entry['id']} is used twice; give each category "
                "its own id"
            )
        if entry["name"] in names.values():
            raise SamPalError(
                f"{json_path}: two categories are named '{entry['name']}'; merge them or rename one"
            )
        names[entry["id"]] = entry["name"]
    return dict(sorted(names.items()))


def _images(json_path: Path, entries: list) -> dict[int | str, dict]:
    """Image id -> image entry, in file order."""
    images: dict[int | str, dict] = {}
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and _is_id(entry.get("id"))
            and isinstance(entry.get("file_name"), str)
            and entry["file_name"]
        ):
            raise SamPalError(
                f"{json_path}: image {entry!r} needs an 'id' (number or text) and a 'file_name'; "
                "fix the images list"
            )
        if entry["id"] in images:
            raise SamPalError(
                f"{json_path}: image id {entry['id']} is used twice; give each image its own id"
            )
        images[entry["id"]] = entry
    return images


def _annotation_label(annotation: dict, index: int) -> str:
    return f"annotation {annotation['id']}" if "id" in annotation else f"annotation #{index + 1}"


def _annotations_by_image(
    json_path: Path, entries: list, images: dict[int | str, dict], categories: dict[int, str]
) -> dict[int | str, list[tuple[str, dict]]]:
    """Image id -> (label, annotation) pairs, every reference checked before any image is read."""
    by_image: dict[int | str, list[tuple[str, dict]]] = {}
    used_categories: set[int] = set()
    for index, annotation in enumerate(entries):
        if not isinstance(annotation, dict):
            raise SamPalError(
                f"{json_path}: annotation #{index + 1} is not an object; fix the annotations list"
            )
        label = _annotation_label(annotation, index)
        for key in ("image_id", "category_id", "segmentation"):
            if key not in annotation:
                raise SamPalError(
                    f"{json_path}: {label} has no '{key}'; fix or delete the annotation"
                )
        image_id, category_id = annotation["image_id"], annotation["category_id"]
        if not _is_id(image_id) or image_id not in images:
            raise SamPalError(
                f"{json_path}: {label} refers to image id {image_id!r}, which is not in 'images'; "
                "fix the annotation or add the image"
            )
        if not _is_id(category_id) or category_id not in categories:
            raise SamPalError(
                f"{json_path}: {label} refers to category id {category_id!r}, which is not in "
                "'categories'; fix the annotation or add the category"
            )
        used_categories.add(category_id)
        by_image.setdefault(image_id, []).append((label, annotation))
    for category_id, name in categories.items():
        if category_id not in used_categories:
            raise SamPalError(
                f"{json_path}: category '{name}' (id {category_id}) has no annotation; annotate it "
                "on at least one template image or delete the category"
            )
    return by_image


def _find_template_image(json_path: Path, file_name: str, image_dir: Path | None) -> Path:
    """file_name next to the JSON, then in image_dir as given, then by base name in image_dir."""
    candidates = [json_path.parent / file_name]
    if image_dir is not None:
        candidates += [image_dir / file_name, image_dir / PureWindowsPath(file_name).name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked_in = f"next to {json_path.name}" + ("" if image_dir is None else f" and in {image_dir}")
    raise SamPalError(
        f"template image not found: {file_name} (from {json_path}; looked {looked_in}); "
        "put it there or pass --template-images DIR"
    )


def _check_size(json_path: Path, entry: dict, width: int, height: int) -> None:
    expected = (entry.get("width"), entry.get("height"))
    if None in expected or expected == (width, height):
        return
    hint = (
        " (the photo has an EXIF rotation the annotation tool may have ignored)"
        if expected == (height, width)
        else ""
    )
    raise SamPalError(
        f"{json_path}: image {entry['id']} ({entry['file_name']}) is {width}x{height} pixels but "
        f"the COCO file says {expected[0]}x{expected[1]}{hint}; annotate the image as it is now "
        "or replace it with the one that was annotated"
    )


def _load_coco_template(
    json_path: Path,
    entry: dict,
    annotations: list[tuple[str, dict]],
    categories: dict[int, str],
    image_dir: Path | None,
    max_pixels: int,
) -> Template:
    file_name = entry["file_name"]
    path = _find_template_image(json_path, file_name, image_dir)
    try:
        image = load_image(path, max_pixels)
    except SamPalError as error:
        raise SamPalError(f"{json_path}: template image {entry['id']}: {error}") from error
    height, width = image.shape[:2]
    _check_size(json_path, entry, width, height)
    masks: dict[str, np.ndarray] = {}
    for label, annotation in annotations:
        name = categories[annotation["category_id"]]
        where = f"{json_path}: {label} ('{name}' on image {entry['id']}, {file_name})"
        try:
            mask = decode_segmentation(annotation["segmentation"], height, width)
        except ValueError as error:
            raise SamPalError(
                f"{where} has a malformed segmentation: {error}; redraw it"
            ) from error
        if not mask.any():
            raise SamPalError(f"{where} has an empty mask; redraw it or delete the annotation")
        masks[name] = masks[name] | mask if name in masks else mask
    return Template(name=file_name, path=path, image=image, masks=masks)


def load_coco_templates(
    json_path: str | Path,
    image_dir: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> TemplateSet:
    """Templates from a COCO file: every image with at least one annotation; one mask per
    category per image, several annotations of a category OR-ed (two eyes are one 'eye')."""
    json_path = Path(json_path)
    image_dir = None if image_dir is None else Path(image_dir)
    if image_dir is not None and not image_dir.is_dir():
        raise SamPalError(
            f"template image folder not found: {image_dir}; pass an existing folder to "
            "--template-images"
        )
    coco = _read_coco(json_path)
    categories = _categories(json_path, coco["categories"])
    images = _images(json_path, coco["images"])
    by_image = _annotations_by_image(json_path, coco["annotations"], images, categories)
    templates = [
        _load_coco_template(json_path, entry, by_image[image_id], categories, image_dir, max_pixels)
        for image_id, entry in images.items()
        if image_id in by_image
    ]
    return TemplateSet(structures=list(categories.values()), templates=templates)


def _mask_pixels(image: Image.Image) -> np.ndarray:
    """Inside = alpha > 0 when the mask uses transparency, else any nonzero pixel value."""
    if image.has_transparency_data:
        alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
        if alpha.min() < 255:
            return alpha > 0
    if image.mode == "P" or image.has_transparency_data:
        image = image.convert("RGB")
    values = np.asarray(image)
    return values.any(axis=2) if values.ndim == 3 else values != 0


def load_mask_templates(
    image_path: str | Path,
    masks: dict[str, str | Path],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> TemplateSet:
    """One template from an image and a mask image per structure (nonzero or opaque = inside)."""
    image_path = Path(image_path)
    if not masks:
        raise SamPalError(
            f"no structure masks given for template image {image_path}; give one mask per structure"
        )
    image = load_image(image_path, max_pixels)
    height, width = image.shape[:2]
    loaded: dict[str, np.ndarray] = {}
    for name, mask_path in masks.items():
        mask_path = Path(mask_path)
        try:
            mask_image = open_image(mask_path, max_pixels)
        except SamPalError as error:
            raise SamPalError(f"mask for '{name}': {error}") from error
        if mask_image.size != (width, height):
            raise SamPalError(
                f"mask for '{name}' is {mask_image.width}x{mask_image.height} pixels but template "
                f"image {image_path} is {width}x{height}: {mask_path}; export the mask at the "
                "image's full size"
            )
        mask = _mask_pixels(mask_image)
        if not mask.any():
            raise SamPalError(
                f"mask for '{name}' is empty (no nonzero pixel): {mask_path}; draw the structure "
                "in it or leave the structure out"
            )
        loaded[name] = mask
    template = Template(name=image_path.name, path=image_path, image=image, masks=loaded)
    return TemplateSet(structures=list(masks), templates=[template])


def save_coco_templates(template_set: TemplateSet, json_path: str | Path) -> None:
    """COCO file of the templates (compressed RLE), so mask templates can be reused as COCO.

    Empty masks are left out: the loader rejects them, and mask_stack treats both the same.
    """
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, template in enumerate(template_set.templates, start=1):
        height, width = template.image.shape[:2]
        images.append(
            {"id": image_id, "file_name": template.name, "width": width, "height": height}
        )
        for category_id, name in enumerate(template_set.structures, start=1):
            mask = template.masks.get(name)
            if mask is None or not mask.any():
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": encode_rle(mask),
                    "area": mask_area(mask),
                    "bbox": mask_bbox(mask),
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": category_id, "name": name, "supercategory": "structure"}
        for category_id, name in enumerate(template_set.structures, start=1)
    ]
    atomic_write_json(
        json_path, {"images": images, "annotations": annotations, "categories": categories}
    )
