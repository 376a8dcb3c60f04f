"""Between the browser's image editor and full-resolution masks.

The editor gets images of at most 2048 px on the long side (browsers lose large canvases), one
fixed layer per structure; what comes back is mapped to the image's full resolution. A layer
that comes back (almost) fully painted is the lost-canvas failure, not a drawing, and is refused.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sam2pal.errors import SamPalError
from sam2pal.io.images import load_photo
from sam2pal.io.overlays import overlay, structure_color

EDITOR_MAX_SIDE = 2048
CLICK_MAX_SIDE = 1024  # the click image is shown small: each click sends it back, so it stays small too
FULL_LAYER = 0.98


def editor_image(image: np.ndarray, max_side: int = EDITOR_MAX_SIDE) -> np.ndarray:
    """The image as sent to the editor: shrunk so its long side is at most `max_side` px."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def click_image(path: Path) -> np.ndarray:
    """The photo at the click image's size, read-only; decoded once per file version (at the
    JPEG's reduced DCT scale), since every click redraws it."""
    return _click_image(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _click_image(path: str, modified_ns: int) -> np.ndarray:
    image = load_photo(path, 0, CLICK_MAX_SIDE).image
    image.setflags(write=False)
    return image


def to_full_resolution(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 0


def layer_masks(value: dict | None, names: list[str], height: int, width: int) -> dict[str, np.ndarray]:
    """Editor value -> {structure: bool mask at full resolution}, by layer position.

    Layers come back in the panel's order and carry no names; the review gallery shows the user
    what each position became, which is how a reordered or hidden layer is caught.
    """
    if not value or value.get("layers") is None:
        raise SamPalError("the editor sent no layers; load a template image and draw on its layers")
    layers = value["layers"]
    if len(layers) != len(names):
        raise SamPalError(f"the editor sent {len(layers)} layers for {len(names)} structures; "
                          "press Apply structures and draw again")
    masks = {}
    for name, layer in zip(names, layers):
        layer = np.asarray(layer)
        alpha = layer[..., 3] if layer.ndim == 3 and layer.shape[2] == 4 else layer.max(axis=-1) if layer.ndim == 3 else layer
        drawn = alpha > 0
        if drawn.mean() >= FULL_LAYER:
            raise SamPalError(f"layer '{name}' came back fully painted — the browser lost the canvas "
                              "(image too large for it); reload the page and draw again")
        masks[name] = to_full_resolution(drawn, height, width)
    return masks


def tinted(image: np.ndarray, mask: np.ndarray, index: int, alpha: float = 0.45,
           max_side: int = EDITOR_MAX_SIDE) -> np.ndarray:
    """The image at editor size with one structure's mask tinted in its colour (a plain image:
    editors reload it reliably). Shrunk before tinting: a 100 MP photo in float is gigabytes."""
    out = editor_image(image, max_side).copy()
    if mask.shape != out.shape[:2]:  # any covered pixel shows: a 2 px leg must not vanish at 1/5 scale
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(out.shape[1::-1], Image.BOX)) > 0
    color = np.array(structure_color(index), dtype=np.float32)
    out[mask] = (out[mask] * (1 - alpha) + color * alpha).astype(np.uint8)
    return out


def review_items(image: np.ndarray, masks: dict[str, np.ndarray | None], names: list[str]) -> list[tuple[np.ndarray, str]]:
    """One gallery item per structure: its mask exactly as the server holds it, with its area."""
    items = []
    for index, name in enumerate(names):
        mask = masks.get(name)
        if mask is None:
            items.append((editor_image(image), f"{name}: no mask"))
        else:
            items.append((tinted(image, mask, index), f"{name}: {int(mask.sum())} px"))
    return items


def overview(image: np.ndarray, masks: dict[str, np.ndarray | None], names: list[str]) -> np.ndarray:
    """All structures at once with the shared colours and a legend."""
    present = [(n, m) for n, m in ((n, masks.get(n)) for n in names) if m is not None]
    if not present:
        return editor_image(image)
    blank = np.zeros(image.shape[:2], dtype=bool)
    return editor_image(np.asarray(overlay(image, [masks.get(n, blank) if masks.get(n) is not None else blank for n in names], names)))


def corrected(predicted: np.ndarray, value: dict | None) -> np.ndarray:
    """`(predicted | add) & ~remove` from a correction editor with layers "add" and "remove"."""
    height, width = predicted.shape
    layers = layer_masks(value, ["add", "remove"], height, width)
    return (predicted | layers["add"]) & ~layers["remove"]


def with_points(image: np.ndarray, points: list, scale: float) -> np.ndarray:
    """The click image (at most CLICK_MAX_SIDE) with green (inside) and red (outside) dots;
    `scale` maps its pixels to the photo's."""
    shown = Image.fromarray(editor_image(image, CLICK_MAX_SIDE))
    draw = ImageDraw.Draw(shown)
    radius = max(3, shown.width // 150)
    for x, y, label in points:
        cx, cy = x / scale, y / scale
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius),
                     fill=(0, 200, 0) if label else (220, 0, 0), outline=(255, 255, 255))
    return np.asarray(shown)
