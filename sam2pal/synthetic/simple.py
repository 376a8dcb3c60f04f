"""Synthetic specimen collections with known masks, for tests, benchmarks and demos.

No real specimen photos or pretrained weights can be shipped with the tests, so this draws
"specimens": a textured body with up to five coloured structures that move and scale a little
from one specimen to the next, as pinned insects do between photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sam2pal.io.masks import encode_rle, mask_area, mask_bbox

STRUCTURES = ("head", "wing", "eye", "leg", "antenna")
_COLORS = ((150, 70, 30), (200, 190, 120), (30, 30, 30), (110, 60, 20), (170, 120, 60))


def draw_specimen(
    width: int, height: int, count: int, seed: int, jitter: float = 0.08
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One specimen image (H×W×3 uint8) and its `count` structure masks."""
    rng = np.random.default_rng(seed)
    scale = 1 + rng.uniform(-jitter, jitter)
    dx, dy = rng.uniform(-jitter, jitter, 2) * (width, height)
    base = np.linspace(215, 245, width, dtype=np.float32)[None, :, None]
    pixels = np.clip(base + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(pixels)
    cx, cy = width / 2 + dx, height / 2 + dy
    s = min(width, height) * scale
    shapes = {
        "head": ("ellipse", (cx - 0.32 * s, cy - 0.12 * s, cx - 0.12 * s, cy + 0.08 * s)),
        "wing": ("ellipse", (cx - 0.05 * s, cy - 0.35 * s, cx + 0.35 * s, cy - 0.08 * s)),
        "eye": ("ellipse", (cx - 0.30 * s, cy - 0.08 * s, cx - 0.22 * s, cy + 0.00 * s)),
        "leg": ("rectangle", (cx + 0.05 * s, cy + 0.10 * s, cx + 0.10 * s, cy + 0.38 * s)),
        "antenna": ("rectangle", (cx - 0.42 * s, cy - 0.30 * s, cx - 0.38 * s, cy - 0.08 * s)),
    }
    ImageDraw.Draw(canvas).ellipse((cx - 0.2 * s, cy - 0.1 * s, cx + 0.3 * s, cy + 0.15 * s), fill=(120, 90, 60))
    masks = {}
    for name, color in zip(STRUCTURES[:count], _COLORS):
        kind, box = shapes[name]
        layer = Image.new("L", (width, height), 0)
        getattr(ImageDraw.Draw(layer), kind)(box, fill=255)
        getattr(ImageDraw.Draw(canvas), kind)(box, fill=color)
        masks[name] = np.asarray(layer) > 0
    # a structure drawn later covers earlier ones: keep masks consistent with what is visible
    names = list(masks)
    for i, name in enumerate(names):
        for later in names[i + 1 :]:
            masks[name] = masks[name] & ~masks[later]
    return np.asarray(canvas), masks


def write_collection(
    folder: str | Path, templates: int = 1, specimens: int = 4, structures: int = 3, size: tuple[int, int] = (320, 240)
) -> Path:
    """Write `templates` annotated images (COCO `templates.json`, RLE) and `specimens` unlabeled
    JPEGs under `folder`; return the COCO path. Template images sit next to the JSON."""
    folder = Path(folder)
    (folder / "specimens").mkdir(parents=True, exist_ok=True)
    width, height = size
    coco: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(STRUCTURES[:structures])],
    }
    for t in range(templates):
        image, masks = draw_specimen(width, height, structures, seed=1000 + t)
        name = f"template_{t}.png"
        Image.fromarray(image).save(folder / name)
        coco["images"].append({"id": t + 1, "file_name": name, "width": width, "height": height})
        for k, mask in enumerate(masks.values()):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": t + 1, "category_id": k + 1,
                "segmentation": encode_rle(mask), "area": mask_area(mask), "bbox": mask_bbox(mask), "iscrowd": 0,
            })
    for i in range(specimens):
        image, _ = draw_specimen(width, height, structures, seed=i)
        Image.fromarray(image).save(folder / "specimens" / f"specimen_{i:04d}.jpg", quality=92)
    path = folder / "templates.json"
    path.write_text(json.dumps(coco))
    return path
