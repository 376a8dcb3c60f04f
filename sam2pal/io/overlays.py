"""Overlays: the photo with each structure tinted and outlined in its own colour, plus a legend."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sam2pal.io.boxmask import BoxMask

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


def structure_color(index: int) -> tuple[int, int, int]:
    """Colour of the index-th structure; cycles when there are more structures than colours."""
    return STRUCTURE_COLORS[index % len(STRUCTURE_COLORS)]


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


def review_shape(shape: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """(height, width) of an overlay of a photo of `shape` whose long side is at most `long_side`
    (None: full size)."""
    height, width = shape
    if long_side is None or max(height, width) <= long_side:
        return height, width
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay(image: np.ndarray, masks: list[BoxMask | np.ndarray], names: list[str],
            long_side: int | None = None) -> Image.Image:
    """The photo with each structure tinted and outlined in its colour, plus a legend.

    Composited at review size (long side at most `long_side`, None: the masks' full size): the
    image may come decoded smaller than the masks, and each mask is scaled within its box only.
    """
    if len(masks) != len(names):
        raise ValueError(f"{len(masks)} masks but {len(names)} names")
    boxes = [mask if isinstance(mask, BoxMask) else BoxMask.from_dense(mask) for mask in masks]
    full = boxes[0].shape if boxes else image.shape[:2]
    for name, box in zip(names, boxes):
        if box.shape != full:
            raise ValueError(f"mask {name!r} is {box.shape}, the other masks {full}")
    height, width = review_shape(full, long_side)
    canvas = Image.fromarray(np.asarray(image, dtype=np.uint8))  # a copy: RGB is never shared
    if canvas.size != (width, height):
        canvas = canvas.resize((width, height), Image.BILINEAR, reducing_gap=2.0)
    # Pasting a colour through an L mask blends in C; numpy fancy indexing took seconds at 24 MP.
    thickness = max(1, round(min(height, width) / 400))
    for index, box in enumerate(boxes):
        box = box.scaled(height, width)
        crop = box.crop  # built from the box's runs: once
        if crop.size == 0:
            continue
        corner = (box.left, box.top)
        # One paste per structure: the outline at full opacity is what tinting and then
        # painting it would leave, at half the blending work.
        alpha = crop.astype(np.uint8) * _TINT_LEVEL
        alpha[_outline(crop, thickness)] = 255
        canvas.paste(structure_color(index), corner, Image.fromarray(alpha))
    if names:
        _draw_legend(canvas, names)
    return canvas
