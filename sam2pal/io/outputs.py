"""What a run hands back: per-image mask PNGs and overlays, a COCO file and a report.

Every file is written atomically (temp file in the same folder, then os.replace), so an
interrupted run never leaves a half-written PNG or JSON that looks finished.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools.coco import COCO

from sam2pal.io.masks import encode_rle, mask_area, mask_bbox

STRUCTURE_COLORS: list[tuple[int, int, int]] = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
]

_TINT_LEVEL = 115  # mask value for ~0.45 opacity when pasting a colour
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def structure_color(index: int) -> tuple[int, int, int]:
    """Colour of the index-th structure; cycles when there are more structures than colours."""
    return STRUCTURE_COLORS[index % len(STRUCTURE_COLORS)]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and os.replace, so readers see old or new only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 honours the umask, unlike tempfile's private 0o600 files.
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """JSON with indent 2, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def atomic_save_image(path: str | Path, pil_image: Image.Image, **save_kwargs: Any) -> None:
    """PIL save in the format its suffix names, written atomically."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"no image format for suffix {path.suffix!r}: {path}")
    buffer = io.BytesIO()
    pil_image.save(buffer, format=image_format, **save_kwargs)
    atomic_write_bytes(path, buffer.getvalue())


def _window_all(mask: np.ndarray, size: int) -> np.ndarray:
    """out[i] = all(mask[i:i+size]) along axis 0, by doubling windows: O(log size) passes."""
    covered, width = mask, 1
    while width * 2 <= size:
        covered = covered[:-width] & covered[width:]
        width *= 2
    rest = size - width
    return covered[: covered.shape[0] - rest] & covered[rest:] if rest else covered


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Inner border of the mask, thickness pixels wide (mask minus its square erosion)."""
    size = 2 * thickness + 1
    eroded = _window_all(_window_all(np.pad(mask, thickness), size).T, size).T
    return mask & ~eroded


def _draw_legend(canvas: Image.Image, names: list[str]) -> None:
    """Swatch + name per structure in a light box, sized to the image so it stays legible."""
    width, height = canvas.size
    font_size = max(10, min(width, height) // 30)
    font = ImageFont.load_default(size=font_size)
    pad = max(2, font_size // 3)
    swatch = font_size
    row_height = font_size + pad
    measure = ImageDraw.Draw(canvas)
    text_width = max((measure.textlength(name, font=font) for name in names), default=0)
    box_size = (pad * 3 + swatch + int(text_width) + 1, pad * 2 + row_height * len(names))

    # Composite only the box region: a full-size RGBA layer would double a 100 MP photo's memory.
    box = canvas.crop((0, 0, *box_size)).convert("RGBA")
    layer = Image.new("RGBA", box_size, (255, 255, 255, 200))
    draw = ImageDraw.Draw(layer)
    for index, name in enumerate(names):
        top = pad + index * row_height
        draw.rectangle(
            [pad, top, pad + swatch - 1, top + swatch - 1],
            fill=(*structure_color(index), 255),
            outline=(0, 0, 0, 255),
        )
        draw.text((pad * 2 + swatch, top), name, font=font, fill=(0, 0, 0, 255))
    canvas.paste(Image.alpha_composite(box, layer).convert("RGB"), (0, 0))


def overlay(image: np.ndarray, masks: list[np.ndarray], names: list[str]) -> Image.Image:
    """The photo with each structure tinted and outlined in its colour, plus a legend."""
    if len(masks) != len(names):
        raise ValueError(f"{len(masks)} masks but {len(names)} names")
    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 400))
    # Pasting a colour through an L mask blends in C; numpy fancy indexing took seconds at 24 MP.
    canvas = Image.fromarray(np.asarray(image, dtype=np.uint8))  # a copy: RGB is never shared
    for index, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask {names[index]!r} is {mask.shape}, image is {(height, width)}")
        rows = np.flatnonzero(np.any(mask, axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(np.any(mask, axis=0))
        # Work on the bounding box only: structures are usually small parts of big photos.
        crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        corner = (int(cols[0]), int(rows[0]))
        color = structure_color(index)
        tint = Image.fromarray(crop.astype(np.uint8) * _TINT_LEVEL)
        canvas.paste(color, corner, tint)
        edge = Image.fromarray(_outline(crop, thickness).astype(np.uint8) * 255)
        canvas.paste(color, corner, edge)
    if names:
        _draw_legend(canvas, names)
    return canvas


def _safe_file_names(names: list[str]) -> list[str]:
    """File-name-safe, distinct versions of the structure names (COCO keeps the real names)."""
    safe_names: list[str] = []
    for index, name in enumerate(names):
        base = _UNSAFE_FILE_CHARS.sub("_", name).strip("._") or f"structure{index + 1}"
        safe, number = base, 1
        while safe in safe_names:
            number += 1
            safe = f"{base}_{number}"
        safe_names.append(safe)
    return safe_names


class PredictionWriter:
    """Writes a run's outputs into out_dir as images arrive; close() writes the COCO and report."""

    def __init__(self, out_dir: str | Path, structures: list[str], info: dict) -> None:
        if len(set(structures)) != len(structures):
            raise ValueError(f"structure names must be distinct: {structures}")
        self.out_dir = Path(out_dir)
        self.structures = list(structures)
        self.info = dict(info)
        self._file_names = _safe_file_names(self.structures)
        self._used_stems: set[str] = set()
        self._coco_images: list[dict] = []
        self._annotations: list[dict] = []
        self._report_images: list[dict] = []
        (self.out_dir / "masks").mkdir(parents=True, exist_ok=True)
        (self.out_dir / "overlays").mkdir(parents=True, exist_ok=True)

    def _output_stem(self, image_path: Path) -> str:
        """The image's stem; a.jpg and a.png in one run must not overwrite each other's masks."""
        stem = image_path.stem
        if stem in self._used_stems:
            stem = f"{image_path.stem}_{image_path.suffix.lstrip('.')}"
        base, number = stem, 1
        while stem in self._used_stems:
            number += 1
            stem = f"{base}_{number}"
        self._used_stems.add(stem)
        return stem

    def add(
        self,
        image_path: Path,
        image: np.ndarray,
        masks: np.ndarray,
        scores: list[float] | None = None,
        seconds: float | None = None,
    ) -> None:
        """Write this image's mask PNGs and overlay now; keep its COCO entries for close()."""
        image_path = Path(image_path)
        height, width = image.shape[:2]
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (len(self.structures), height, width):
            raise ValueError(
                f"masks for {image_path.name} have shape {masks.shape}, expected "
                f"{(len(self.structures), height, width)}"
            )
        if scores is not None and len(scores) != len(self.structures):
            raise ValueError(f"{len(scores)} scores for {len(self.structures)} structures")

        stem = self._output_stem(image_path)
        for mask, file_name in zip(masks, self._file_names):
            png = Image.fromarray(mask.astype(np.uint8) * 255)
            atomic_save_image(self.out_dir / "masks" / f"{stem}__{file_name}.png", png)
        atomic_save_image(
            self.out_dir / "overlays" / f"{stem}.jpg",
            overlay(image, list(masks), self.structures),
            quality=90,
        )

        image_id = len(self._coco_images) + 1
        self._coco_images.append(
            {"id": image_id, "file_name": image_path.name, "width": width, "height": height}
        )
        per_structure: dict[str, dict] = {}
        for index, (name, mask) in enumerate(zip(self.structures, masks)):
            score = None if scores is None else float(scores[index])
            area = mask_area(mask)
            per_structure[name] = {"area": area, "score": score}
            if area == 0:
                continue
            annotation = {
                "id": len(self._annotations) + 1,
                "image_id": image_id,
                "category_id": index + 1,
                "segmentation": encode_rle(mask),
                "area": area,
                "bbox": mask_bbox(mask),
                "iscrowd": 0,
            }
            if score is not None:
                annotation["score"] = score
            self._annotations.append(annotation)
        self._report_images.append(
            {
                "file": image_path.name,
                "status": "ok",
                "error": None,
                "seconds": None if seconds is None else float(seconds),
                "structures": per_structure,
            }
        )

    def add_failure(self, image_path: Path, error: str) -> None:
        """Record an image that could not be processed, so the report lists it."""
        self._report_images.append(
            {
                "file": Path(image_path).name,
                "status": "failed",
                "error": str(error),
                "seconds": None,
                "structures": {},
            }
        )

    def _coco(self) -> dict:
        return {
            "info": {**self.info, "date_created": datetime.now(timezone.utc).isoformat()},
            "images": self._coco_images,
            "annotations": self._annotations,
            "categories": [
                {"id": index + 1, "name": name, "supercategory": "structure"}
                for index, name in enumerate(self.structures)
            ],
        }

    def _check_predictions(self, path: Path) -> None:
        """Reload with pycocotools and decode every mask: what we hand over must open elsewhere."""
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
        for annotation in coco.dataset["annotations"]:
            image = coco.imgs[annotation["image_id"]]
            with warnings.catch_warnings():
                # pycocotools' decode trips numpy 2's copy=False deprecation on every call.
                warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
                mask = coco.annToMask(annotation)
            if mask.shape != (image["height"], image["width"]):
                raise RuntimeError(
                    f"{path}: annotation {annotation['id']} decodes to shape {mask.shape}, "
                    f"expected {(image['height'], image['width'])}"
                )
            if int(mask.sum()) != annotation["area"]:
                raise RuntimeError(
                    f"{path}: annotation {annotation['id']} decodes to {int(mask.sum())} "
                    f"pixels, expected {annotation['area']}"
                )

    def close(self) -> dict:
        """Write predictions.json and report.json, verify the COCO file, return the report."""
        predictions_path = self.out_dir / "predictions.json"
        atomic_write_json(predictions_path, self._coco())
        n_ok = sum(entry["status"] == "ok" for entry in self._report_images)
        report = {
            "structures": self.structures,
            "images": self._report_images,
            "n_ok": n_ok,
            "n_failed": len(self._report_images) - n_ok,
        }
        atomic_write_json(self.out_dir / "report.json", report)
        self._check_predictions(predictions_path)
        return report
