"""Template images with their annotated structures: the examples SAM2 segments new photos from.

Templates come from a COCO file (any annotation tool) or from one image plus one mask PNG per
structure. Every problem is reported as a one-line SamPalError naming the file and the image,
annotation or category at fault, because users hand-edit and re-export these files often; what
is lost on the way (a rectangle, a two-point polygon) is a warning in TemplateSet.warnings.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sam2pal.errors import SamPalError
from sam2pal.io.coco import (
    ABSENT,
    CocoFile,
    CocoImage,
    base_name,
    read_coco,
    structure_masks,
    without_upload_prefix,
)
from sam2pal.io.images import (
    DEFAULT_MAX_PIXELS,
    ImageHeader,
    image_header,
    load_image,
    open_image,
    orient_mask,
    scan_images,
)
from sam2pal.io.masks import encode_rle, mask_area, mask_bbox
from sam2pal.io.files import atomic_write_json


@dataclass
class Template:
    """One template image and the masks of the structures annotated on it.

    `absent` holds structures the annotator marked as truly missing on this specimen, which is
    not the same as not annotated: the engine may use it as a negative example.
    """

    name: str
    path: Path
    image: np.ndarray
    masks: dict[str, np.ndarray]
    absent: set[str] = field(default_factory=set)


@dataclass
class TemplateSet:
    """All templates and the structures they define, in category order."""

    structures: list[str]
    templates: list[Template]
    warnings: list[str] = field(default_factory=list)

    def mask_stack(self, index: int) -> np.ndarray:
        """Bool (K, H, W) in structures order; all-False where a structure is absent, and also
        where it is not annotated: `annotated` tells the two apart, and rows that are not
        annotated must not be used (no loss, no memory)."""
        template = self.templates[index]
        blank = np.zeros(template.image.shape[:2], dtype=bool)
        return np.stack([template.masks.get(name, blank) for name in self.structures])

    def annotated(self, index: int) -> list[bool]:
        """Per structure: does template `index` say anything about it (a mask, or 'absent')?"""
        template = self.templates[index]
        return [name in template.masks or name in template.absent for name in self.structures]

    def memory_groups(self, indices: list[int]) -> list[tuple[list[int], list[int]]]:
        """Structures that share the same annotating templates among `indices`, as
        (structure rows, template indices) pairs: a structure's memory holds only the templates
        that annotate it. Structures no template annotates are left out."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for k in range(len(self.structures)):
            sources = tuple(i for i in indices if self.annotated(i)[k])
            if sources:
                groups.setdefault(sources, []).append(k)
        return [(rows, list(sources)) for sources, rows in groups.items()]

    def fingerprint(self) -> str:
        """SHA-256 of what propagation depends on: structures, template pixels and masks, absent
        marks. Results record it, so an edited template is told apart from the original."""
        digest = hashlib.sha256(json.dumps(self.structures).encode())
        for template in self.templates:
            digest.update(
                json.dumps(
                    [template.name, sorted(template.absent), list(template.image.shape)]
                ).encode()
            )
            digest.update(np.ascontiguousarray(template.image).tobytes())
            for name in self.structures:
                if name in template.masks:
                    digest.update(name.encode())
                    digest.update(np.packbits(template.masks[name]).tobytes())
        return digest.hexdigest()


def _relative_parts(file_name: str) -> list[str]:
    """Folders and name of a COCO file_name, without drive letters and anything above a '..'."""
    parts = [
        part for part in re.split(r"[\\/]", file_name) if part not in ("", ".") and ":" not in part
    ]
    if ".." in parts:
        parts = parts[len(parts) - parts[::-1].index("..") :]
    return parts


def _same_upload_name(candidate: str, wanted: str) -> bool:
    return without_upload_prefix(candidate).casefold() == without_upload_prefix(wanted).casefold()


def _same_stem(candidate: str, wanted: str) -> bool:
    return (
        Path(without_upload_prefix(candidate)).stem.casefold()
        == Path(without_upload_prefix(wanted)).stem.casefold()
    )


@dataclass(frozen=True)
class ImageRole:
    """What the images of a COCO file are, for messages: templates, or labelled specimens."""

    noun: str
    folder_flag: str


TEMPLATE_IMAGES = ImageRole("template", "--template-images")


class _ImageFinder:
    """Finds the file a COCO file_name means among the files the user actually has.

    Exports name images as the tool stored them: with folders ('images/default/a.jpg'), with
    '../../label-studio/media/upload/1/' in front, with Label Studio's upload hash
    ('1b3e5f2a-a.jpg'), or with another extension after a conversion. Tried in that order of
    certainty: the path and each of its tails, the absolute path, the name without the upload
    hash, the stem. The --template-images folder comes before the JSON's folder.
    """

    def __init__(self, json_path: Path, image_dir: Path | None, role: ImageRole = TEMPLATE_IMAGES) -> None:
        self.json_path = json_path
        self.image_dir = image_dir
        self.role = role
        self.folders = [folder for folder in (image_dir, json_path.parent) if folder is not None]
        self._listings: dict[Path, list[Path]] = {}

    def _images_in(self, folder: Path) -> list[Path]:
        if folder not in self._listings:
            self._listings[folder] = scan_images(folder).images
        return self._listings[folder]

    def find(self, file_name: str) -> Path:
        parts = _relative_parts(file_name)
        for folder in self.folders:
            for start in range(len(parts)):
                candidate = folder.joinpath(*parts[start:])
                if candidate.is_file():
                    return candidate
        given = Path(file_name)
        if given.is_absolute() and given.is_file():
            return given
        wanted = base_name(file_name)
        for same in (_same_upload_name, _same_stem):
            for folder in self.folders:
                found = [entry for entry in self._images_in(folder) if same(entry.name, wanted)]
                if len(found) > 1:
                    names = ", ".join(entry.name for entry in found[:3])
                    raise SamPalError(
                        f"{self.role.noun} image {file_name} (from {self.json_path}) could be any of "
                        f"{names} in {folder}; rename the file that was annotated to {wanted}"
                    )
                if found:
                    return found[0]
        looked_in = f"next to {self.json_path.name}" + (
            "" if self.image_dir is None else f" and in {self.image_dir}"
        )
        raise SamPalError(
            f"{self.role.noun} image not found: {file_name} (from {self.json_path}; looked {looked_in}); "
            f"put it there or pass {self.role.folder_flag} DIR"
        )


def _orientation_for(
    header: ImageHeader, size: tuple[int, int] | None, where: str, what: str, warnings: list[str]
) -> int | None:
    """EXIF orientation to apply to annotations drawn at `size` (width, height): 1 when they
    are on the upright photo, the photo's own when they are on the stored pixels, None when
    `size` fits neither."""
    upright = header.size
    if size is None or size == upright:
        if header.orientation != 1 and (size is None or header.raw_size == upright):
            warnings.append(
                f"{where} has EXIF orientation {header.orientation}; its {what} are taken as "
                "drawn on the upright photo"
            )
        return 1
    if size == header.raw_size:
        warnings.append(
            f"{where}: the {what} are {size[0]}x{size[1]}, the photo as stored before its EXIF "
            "rotation; they were turned upright with it"
        )
        return header.orientation
    return None


def _size_error(json_path: Path, image: CocoImage, header: ImageHeader) -> SamPalError:
    width, height = header.size
    stored = ""
    if header.raw_size != header.size:
        stored = f" ({header.raw_size[0]}x{header.raw_size[1]} as stored, before its EXIF rotation)"
    return SamPalError(
        f"{json_path}: image {image.id} ({image.file_name}) is {width}x{height} pixels{stored} "
        f"but the COCO file says {image.width}x{image.height}; annotate the image as it is now "
        "or replace it with the one that was annotated"
    )


def _load_coco_template(
    json_path: Path,
    image: CocoImage,
    finder: _ImageFinder,
    max_pixels: int,
    warnings: list[str],
) -> Template:
    path = finder.find(image.file_name)
    try:
        header = image_header(path)
        pixels = load_image(path, max_pixels)
    except SamPalError as error:
        raise SamPalError(f"{json_path}: {finder.role.noun} image {image.id}: {error}") from error
    size = None if image.width is None or image.height is None else (image.width, image.height)
    where = f"{json_path}: image {image.id} ({image.file_name})"
    orientation = _orientation_for(header, size, where, "annotations", warnings)
    if orientation is None:
        raise _size_error(json_path, image, header)
    width, height = header.size if orientation == 1 else header.raw_size
    masks = structure_masks(image, height, width, nonempty=True)
    upright = {name: orient_mask(mask, orientation) for name, mask in masks.items()}
    return Template(
        name=image.file_name, path=path, image=pixels, masks=upright, absent=set(image.absent)
    )


def _usable_structures(coco: CocoFile, templates: list[CocoImage], warnings: list[str], noun: str) -> list[str]:
    """Categories with an example (an annotation, or 'absent' on every template). Others are
    skipped with a warning: exports carry helper categories and labels nobody used."""
    annotated = {annotation.structure for image in templates for annotation in image.annotations}
    usable = []
    for name in coco.structures:
        if name in annotated or all(name in image.absent for image in templates):
            usable.append(name)
            continue
        skipped = coco.skipped[name]
        why = f"no usable annotation ({skipped} without a mask or polygon)" if skipped else "no annotation"
        warnings.append(f"{coco.path}: category '{name}' (id {coco.category_ids[name][0]}) has {why} on any "
                        f"{noun}: skipped")
    return usable


def load_coco_templates(
    json_path: str | Path,
    image_dir: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    role: ImageRole = TEMPLATE_IMAGES,
    absent_only: bool = False,
) -> TemplateSet:
    """Templates from a COCO file: every image with at least one annotation; one mask per
    category per image, several annotations of a category OR-ed (two eyes are one 'eye').
    `role` names the images in messages (labelled specimens load the same way); with
    `absent_only`, an image that only marks structures absent is kept too."""
    json_path = Path(json_path)
    image_dir = None if image_dir is None else Path(image_dir)
    if image_dir is not None and not image_dir.is_dir():
        raise SamPalError(
            f"{role.noun} image folder not found: {image_dir}; pass an existing folder to "
            f"{role.folder_flag}"
        )
    coco = read_coco(json_path, f"{role.noun} file")
    images = [image for image in coco.images if image.annotations or (absent_only and image.absent)]
    if not images:
        raise SamPalError(
            f"{json_path}: no image has a usable annotation; draw at least one structure as a "
            "polygon or mask"
        )
    warnings = list(coco.warnings)
    structures = _usable_structures(coco, images, warnings, role.noun)
    finder = _ImageFinder(json_path, image_dir, role)
    templates = [
        _load_coco_template(json_path, image, finder, max_pixels, warnings) for image in images
    ]
    return TemplateSet(structures=structures, templates=templates, warnings=warnings)


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
    header = image_header(image_path)
    image = load_image(image_path, max_pixels)
    width, height = header.size
    warnings: list[str] = []
    loaded: dict[str, np.ndarray] = {}
    for name, mask_path in masks.items():
        mask_path = Path(mask_path)
        try:
            mask_image = open_image(mask_path, max_pixels)
        except SamPalError as error:
            raise SamPalError(f"mask for '{name}': {error}") from error
        where = f"mask for '{name}' ({mask_path}) on template image {image_path}"
        orientation = _orientation_for(header, mask_image.size, where, "mask pixels", warnings)
        if orientation is None:
            raise SamPalError(
                f"mask for '{name}' is {mask_image.width}x{mask_image.height} pixels but template "
                f"image {image_path} is {width}x{height}: {mask_path}; export the mask at the "
                "image's full size"
            )
        mask = orient_mask(_mask_pixels(mask_image), orientation)
        if not mask.any():
            raise SamPalError(
                f"mask for '{name}' is empty (no nonzero pixel): {mask_path}; draw the structure "
                "in it or leave the structure out"
            )
        loaded[name] = mask
    template = Template(name=image_path.name, path=image_path, image=image, masks=loaded)
    return TemplateSet(structures=list(masks), templates=[template], warnings=warnings)


def load_templates(
    coco_json: str | Path | None = None,
    template_images: str | Path | None = None,
    image: str | Path | None = None,
    masks: dict[str, str | Path] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> TemplateSet:
    """Templates from a COCO file, or from one image plus one mask PNG per structure."""
    if coco_json is not None:
        if image is not None or masks:
            raise SamPalError(
                "give either --templates T.json or --template-image with --mask NAME=PATH, not both"
            )
        return load_coco_templates(coco_json, template_images, max_pixels)
    if image is not None and masks:
        return load_mask_templates(image, masks, max_pixels)
    raise SamPalError(
        "no templates: pass --templates T.json, or --template-image IMG with --mask NAME=PATH per "
        "structure"
    )


def save_coco_templates(template_set: TemplateSet, json_path: str | Path) -> None:
    """COCO file of the templates (compressed RLE), so mask templates can be reused as COCO.

    Empty masks are left out: the loader rejects them, and mask_stack treats both the same.
    """
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, template in enumerate(template_set.templates, start=1):
        height, width = template.image.shape[:2]
        entry = {"id": image_id, "file_name": template.name, "width": width, "height": height}
        if template.absent:
            entry["structure_status"] = {name: ABSENT for name in sorted(template.absent)}
        images.append(entry)
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
