"""Reading COCO annotation files the way real annotation tools write them.

Descriptron, CVAT and Label Studio each bend COCO a little: text image ids, category id 0, a
category listed twice, uncompressed RLE with iscrowd 1, rectangles with an empty segmentation,
two-point polygons, `structure_status` marking a structure absent on an image. What can be read
is read; what is lost on the way is a warning naming the annotation and image; what cannot be
read is a one-line SamPalError naming the file, the annotation and the image.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from sam2pal.errors import SamPalError
from sam2pal.io.masks import decode_segmentation, is_number

_COCO_LISTS = ("images", "annotations", "categories")
# Label Studio stores uploads as "<hex>-<original name>" (uuid4[:8] today, shorter in old exports).
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{6,32}-(?=.)")
ABSENT = "absent"

Id = int | str


@dataclass
class CocoAnnotation:
    """One annotation: its structure and its segmentation (RLE dict or polygon list)."""

    where: str  # "t.json: annotation 7 ('eye' on image 3, a.png)", for messages
    structure: str
    segmentation: dict | list | None  # None: nothing usable (bbox only), skipped with a warning


@dataclass
class CocoImage:
    """One entry of 'images' with its usable annotations and the structures marked absent."""

    id: Id
    file_name: str
    width: int | None
    height: int | None
    annotations: list[CocoAnnotation] = field(default_factory=list)
    absent: set[str] = field(default_factory=set)


@dataclass
class CocoFile:
    """A checked COCO file: structures in ascending category id, images in file order."""

    path: Path
    category_ids: dict[str, list[Id]]  # structure -> its category ids (one, unless a name repeats)
    images: list[CocoImage]
    skipped: dict[str, int]  # structure -> annotations skipped (bbox only, degenerate polygon)
    warnings: list[str]

    @property
    def structures(self) -> list[str]:
        return list(self.category_ids)


def _read_json(path: Path, what: str) -> Any:
    """Parsed JSON, or a one-line error saying what is wrong with the file."""
    if path.is_dir():
        raise SamPalError(
            f"expected a COCO JSON file but got a folder: {path}; pass the file itself"
        )
    if not path.exists():
        raise SamPalError(f"{what} not found: {path}; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise SamPalError(
            f"{path} is not valid JSON (not UTF-8 text); export it as COCO JSON"
        ) from error
    except json.JSONDecodeError as error:
        raise SamPalError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg}); fix the file or export it again"
        ) from error
    except OSError as error:
        raise SamPalError(
            f"cannot read {path} ({error.strerror}); check its permissions"
        ) from error


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _id_order(item: tuple[Id, Any]) -> tuple[bool, Id]:
    """Integer ids ascending, then text ids (Descriptron) in text order."""
    return isinstance(item[0], str), item[0]


def _categories(path: Path, entries: list, warnings: list[str]) -> dict[Id, str]:
    """Category id -> name in ascending id order; a category listed twice is read once."""
    names: dict[Id, str] = {}
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and _is_id(entry.get("id"))
            and isinstance(entry.get("name"), str)
            and entry["name"].strip()
        ):
            raise SamPalError(
                f"{path}: category {entry!r} needs an 'id' and a non-empty 'name'; fix the "
                "categories list"
            )
        category_id, name = entry["id"], entry["name"].strip()
        if category_id in names and names[category_id] != name:
            raise SamPalError(
                f"{path}: category id {category_id!r} is used for both '{names[category_id]}' "
                f"and '{name}'; give each category its own id"
            )
        if category_id in names:
            warnings.append(
                f"{path}: category {category_id!r} ('{name}') is listed twice; read once"
            )
        names[category_id] = name
    return dict(sorted(names.items(), key=_id_order))


def _size(value: Any) -> int | None:
    """A width or height; Label Studio writes null when it could not open the image."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _absent(path: Path, entry: dict, structures: set[str], warnings: list[str]) -> set[str]:
    """Structures an image marks truly absent (Descriptron: structure_status {"eye": "absent"})."""
    status = entry.get("structure_status")
    if status is None:
        return set()
    label = f"image {entry['id']} ({entry['file_name']})"
    if not isinstance(status, dict):
        warnings.append(f"{path}: {label} has a structure_status that is not an object; ignored")
        return set()
    absent = set()
    for name, value in status.items():
        if not (isinstance(value, str) and value.strip().lower() == ABSENT):
            continue
        if name in structures:
            absent.add(name)
        else:
            warnings.append(
                f"{path}: {label} marks '{name}' absent, but no category has that name; ignored"
            )
    return absent


def _images(
    path: Path, entries: list, structures: set[str], warnings: list[str]
) -> dict[Id, CocoImage]:
    images: dict[Id, CocoImage] = {}
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and _is_id(entry.get("id"))
            and isinstance(entry.get("file_name"), str)
            and entry["file_name"]
        ):
            raise SamPalError(
                f"{path}: image {entry!r} needs an 'id' (number or text) and a 'file_name'; "
                "fix the images list"
            )
        if entry["id"] in images:
            raise SamPalError(
                f"{path}: image id {entry['id']} is used twice; give each image its own id"
            )
        images[entry["id"]] = CocoImage(
            id=entry["id"],
            file_name=entry["file_name"],
            width=_size(entry.get("width")),
            height=_size(entry.get("height")),
            absent=_absent(path, entry, structures, warnings),
        )
    return images


def _usable_polygons(polygons: list, where: str, warnings: list[str]) -> list:
    """Polygon parts with at least 3 points; shorter ones (a stray click) dropped with a warning.

    Malformed parts (not numbers, odd length) are kept so that decoding reports them.
    """
    if all(is_number(value) for value in polygons):
        polygons = [polygons]
    kept = []
    for number, part in enumerate(polygons, start=1):
        degenerate = (
            isinstance(part, list)
            and all(is_number(value) for value in part)
            and len(part) % 2 == 0
            and len(part) < 6
        )
        if degenerate:
            points = len(part) // 2
            warnings.append(
                f"{where}: polygon part {number} has {points} point{'s' * (points != 1)}, fewer "
                "than 3; dropped"
            )
        else:
            kept.append(part)
    return kept


def _annotation(
    path: Path,
    index: int,
    annotation: Any,
    images: dict[Id, CocoImage],
    categories: dict[Id, str],
    warnings: list[str],
) -> tuple[CocoImage, CocoAnnotation]:
    """The annotation's image and content; segmentation None when nothing usable is left."""
    if not isinstance(annotation, dict):
        raise SamPalError(
            f"{path}: annotation #{index + 1} is not an object; fix the annotations list"
        )
    label = f"annotation {annotation['id']}" if "id" in annotation else f"annotation #{index + 1}"
    for key in ("image_id", "category_id"):
        if key not in annotation:
            raise SamPalError(f"{path}: {label} has no '{key}'; fix or delete the annotation")
    image_id, category_id = annotation["image_id"], annotation["category_id"]
    if not _is_id(image_id) or image_id not in images:
        raise SamPalError(
            f"{path}: {label} refers to image id {image_id!r}, which is not in 'images'; "
            "fix the annotation or add the image"
        )
    if not _is_id(category_id) or category_id not in categories:
        raise SamPalError(
            f"{path}: {label} refers to category id {category_id!r}, which is not in "
            "'categories'; fix the annotation or add the category"
        )
    image, name = images[image_id], categories[category_id]
    where = f"{path}: {label} ('{name}' on image {image.id}, {image.file_name})"
    segmentation = annotation.get("segmentation")
    if segmentation is None or segmentation == [] or segmentation == {}:
        has_box = isinstance(annotation.get("bbox"), list) and len(annotation["bbox"]) == 4
        what = "only a bounding box" if has_box else "no segmentation"
        warnings.append(f"{where} has {what}, no mask or polygon; skipped")
        segmentation = None
    elif isinstance(segmentation, list):
        segmentation = _usable_polygons(segmentation, where, warnings)
        if not segmentation:
            warnings.append(f"{where} has no polygon with 3 points or more; skipped")
            segmentation = None
    return image, CocoAnnotation(where, name, segmentation)


def read_coco(path: str | Path, what: str = "COCO file") -> CocoFile:
    """Parse and check a COCO file; every reference is checked before any image is read."""
    path = Path(path)
    data = _read_json(path, what)
    missing = [
        key
        for key in _COCO_LISTS
        if not isinstance(data, dict) or not isinstance(data.get(key), list)
    ]
    if missing:
        raise SamPalError(
            f"{path} is not a COCO annotation file: it needs top-level 'images', "
            f"'annotations' and 'categories' lists (missing: {', '.join(missing)}); "
            "export the annotations as COCO JSON"
        )
    warnings: list[str] = []
    categories = _categories(path, data["categories"], warnings)
    category_ids: dict[str, list[Id]] = {}
    for category_id, name in categories.items():
        category_ids.setdefault(name, []).append(category_id)
    for name, ids in category_ids.items():
        if len(ids) > 1:
            warnings.append(
                f"{path}: categories {', '.join(map(repr, ids))} are all named '{name}'; "
                "their annotations are one structure"
            )
    images = _images(path, data["images"], set(category_ids), warnings)
    skipped = {name: 0 for name in category_ids}
    for index, entry in enumerate(data["annotations"]):
        image, annotation = _annotation(path, index, entry, images, categories, warnings)
        name = annotation.structure
        if annotation.segmentation is None:
            skipped[name] += 1
            continue
        if name in image.absent:
            warnings.append(
                f"{annotation.where}: the image marks '{name}' absent; the annotation is used"
            )
            image.absent.discard(name)
        image.annotations.append(annotation)
    return CocoFile(path, category_ids, list(images.values()), skipped, warnings)


def decode_annotation(annotation: CocoAnnotation, height: int, width: int) -> np.ndarray:
    """Bool (height, width) mask, or a one-line error naming the annotation and image."""
    try:
        return decode_segmentation(annotation.segmentation, height, width)
    except ValueError as error:
        raise SamPalError(
            f"{annotation.where} has a malformed segmentation: {error}; redraw it"
        ) from error


def structure_masks(
    image: CocoImage, height: int, width: int, nonempty: bool = False
) -> dict[str, np.ndarray]:
    """One mask per structure on this image: several annotations of a structure OR-ed.
    `nonempty` refuses an annotation whose mask has no pixel (a template must show what it means)."""
    masks: dict[str, np.ndarray] = {}
    for annotation in image.annotations:
        mask = decode_annotation(annotation, height, width)
        if nonempty and not mask.any():
            raise SamPalError(f"{annotation.where} has an empty mask; redraw it or delete the annotation")
        name = annotation.structure
        masks[name] = masks[name] | mask if name in masks else mask
    return masks


def base_name(file_name: str) -> str:
    """The file name without folders, whichever separator the exporting system used."""
    return PureWindowsPath(file_name).name


def without_upload_prefix(name: str) -> str:
    """'1b3e5f2a-photo.jpg' -> 'photo.jpg' (Label Studio's upload names); others unchanged."""
    return _UPLOAD_PREFIX.sub("", name, count=1)
