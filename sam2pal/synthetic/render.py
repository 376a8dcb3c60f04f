"""Drawing a synthetic specimen photo: a species in a pose, on an imaging setup's background.

A `Species` (body plan, traits, palette) is what stays the same across a collection; a `Setup`
(background, lighting, clutter) is how the collection was photographed. Each call of `draw`
is one individual in one pose. Masks come from a label map drawn in the same order as the
pixels, so a structure's mask is exactly what is visible of it.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sam2pal.synthetic.taxa import TAXA, Part

BACKGROUNDS = ("paper", "foam", "grid", "cloth", "tinted", "wood")
_COVER = 254  # label value: drawn, but of no structure
_CLUTTER = 253  # a specimen label or scale bar lying on top


@dataclass
class Species:
    taxon: str
    traits: dict[str, float]
    palette: dict[str, tuple[int, int, int]]
    texture: str  # "plain", "speckle" or "stripes"
    structures: list[str] = field(default_factory=list)
    thin: list[str] = field(default_factory=list)  # drawn only as lines a few pixels wide


@dataclass
class Setup:
    background: str
    base: tuple[int, int, int]  # background colour
    light: float  # overall brightness factor
    warmth: float  # colour cast, −0.15 (blue) … 0.15 (warm)
    vignette: float
    noise: float  # sensor noise σ in grey levels
    pins: bool
    labels: bool
    rotation: float  # the collection's usual orientation, radians
    pose_jitter: float  # rotation between specimens, radians (σ)
    scale: float  # the collection's usual body length, as a share of the photo's short side
    size: tuple[int, int]  # photo width, height


def _colour(rng: np.random.Generator, hue: float, sat: tuple[float, float], val: tuple[float, float]) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def sample_species(taxon: str, rng: np.random.Generator) -> Species:
    plan = TAXA[taxon]
    traits = plan.traits(rng)
    hue = rng.uniform(0, 1)
    dark = rng.uniform(0.1, 0.5)
    palette = {
        "body": _colour(rng, hue, (0.3, 0.9), (dark + 0.15, dark + 0.5)),
        "dark": _colour(rng, hue + rng.uniform(-0.1, 0.1), (0.2, 0.8), (dark * 0.5, dark + 0.1)),
        "wing": _colour(rng, hue + rng.uniform(-0.3, 0.3), (0.1, 0.9), (0.2, 0.95)),
        "append": _colour(rng, hue + rng.uniform(-0.05, 0.05), (0.2, 0.7), (dark * 0.6, dark + 0.3)),
        "eye": _colour(rng, rng.uniform(0, 1), (0.0, 0.8), (0.05, 0.6)),
        "light": _colour(rng, hue + 0.5, (0.0, 0.4), (0.6, 1.0)),
    }
    species = Species(taxon, traits, palette, str(rng.choice(["plain", "speckle", "stripes"])))
    parts = plan.parts(traits, np.random.default_rng(0))
    names = [p.structure for p in parts if p.structure is not None]
    species.structures = [name for name in plan.structures if name in names]
    species.thin = [name for name in species.structures
                    if all(p.kind == "line" and p.width <= 0.035 for p in parts if p.structure == name)]
    return species


def sample_setup(rng: np.random.Generator, backgrounds: tuple[str, ...] = BACKGROUNDS[:-1],
                 harsh: bool = False) -> Setup:
    """`harsh`: strong colour cast, dim and noisy light, as a poorly set-up camera stand gives."""
    background = str(rng.choice(backgrounds))
    grey = {"paper": (0.8, 0.97), "foam": (0.6, 0.95), "grid": (0.8, 0.97), "cloth": (0.05, 0.3),
            "tinted": (0.4, 0.85), "wood": (0.35, 0.6)}[background]
    sat = {"tinted": (0.2, 0.6), "wood": (0.4, 0.7)}.get(background, (0.0, 0.12))
    hue = 0.08 if background == "wood" else rng.uniform(0, 1)
    width = int(rng.integers(320, 449))
    height = int(width * rng.uniform(0.62, 0.9))
    return Setup(
        background=background,
        base=_colour(rng, hue, sat, grey),
        light=float(rng.uniform(0.55, 0.8) if harsh else rng.uniform(0.85, 1.15)),
        warmth=float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.25) if harsh else rng.uniform(-0.08, 0.08)),
        vignette=float(rng.uniform(0.3, 0.5) if harsh else rng.uniform(0.0, 0.25)),
        noise=float(rng.uniform(8, 14) if harsh else rng.uniform(1, 6)),
        pins=bool(rng.uniform() < 0.7),
        labels=bool(rng.uniform() < 0.6),
        rotation=float(rng.uniform(-math.pi, math.pi) if rng.uniform() < 0.3 else rng.normal(0, 0.2)),
        pose_jitter=float(rng.uniform(0.04, 0.2)),
        scale=float(rng.uniform(0.5, 0.85)),
        size=(width, height),
    )


def _background(setup: Setup, rng: np.random.Generator) -> np.ndarray:
    width, height = setup.size
    base = np.array(setup.base, dtype=np.float32)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gx, gy = rng.normal(0, 0.08, 2)
    pixels = base * (1 + gx * (x / width - 0.5) + gy * (y / height - 0.5))[..., None]
    if setup.background == "foam":
        blobs = rng.normal(0, 1, (height // 16 + 2, width // 16 + 2)).astype(np.float32)
        blobs = np.asarray(Image.fromarray(blobs).resize((width, height), Image.BICUBIC))
        pixels *= (1 + 0.05 * blobs)[..., None]
    elif setup.background == "grid":
        step = int(rng.integers(14, 40))
        offset = rng.integers(0, step, 2)
        lines = ((x.astype(int) + offset[0]) % step < 1) | ((y.astype(int) + offset[1]) % step < 1)
        pixels[lines] *= 0.8
    elif setup.background == "cloth":
        pixels += rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    elif setup.background == "wood":
        freq = rng.uniform(0.05, 0.15)
        grain = np.sin(y * freq + 3 * np.sin(x * 0.01 + rng.uniform(0, 6)))
        pixels *= (1 + 0.12 * grain)[..., None]
    return pixels


def _pose(setup: Setup, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Rotation, pixels per body length, centre x, y: a specimen of a collection is placed as
    the others were, give or take (one camera stand, specimens of one species)."""
    width, height = setup.size
    angle = setup.rotation + float(rng.normal(0, setup.pose_jitter))
    scale = min(width, height) * setup.scale * float(rng.uniform(0.9, 1.1))
    cx = width / 2 + float(rng.normal(0, 0.04)) * width
    cy = height / 2 + float(rng.normal(0, 0.04)) * height
    return angle, scale, cx, cy


def _to_pixels(points: np.ndarray, pose: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    angle, scale, cx, cy = pose
    c, s = math.cos(angle), math.sin(angle)
    x = (points[:, 0] * c - points[:, 1] * s) * scale + cx
    y = (points[:, 0] * s + points[:, 1] * c) * scale + cy
    return list(zip(x.tolist(), y.tolist()))


def _draw_part(draw: ImageDraw.ImageDraw, part: Part, pose, fill, scale: float) -> None:
    points = _to_pixels(part.points, pose)
    if part.kind == "polygon":
        draw.polygon(points, fill=fill)
    else:
        width = max(1, int(round(part.width * scale)))
        draw.line(points, fill=fill, width=width, joint="curve")
        radius = width / 2
        for px, py in (points[0], points[-1]):
            draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=fill)


def _shade(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    factor = rng.uniform(0.85, 1.15)
    return tuple(int(min(255, max(0, v * factor))) for v in rgb)


def _clutter(canvas: ImageDraw.ImageDraw, labels: ImageDraw.ImageDraw, setup: Setup, pose, rng) -> None:
    width, height = setup.size
    _, scale, cx, cy = pose
    if setup.pins:  # the pin through the body, its head a bead
        px, py = cx + rng.normal(0, 0.05) * scale, cy + rng.normal(0, 0.05) * scale
        tip = (px + rng.normal(0, 8), py + rng.uniform(0.2, 0.5) * height)
        grey = int(rng.integers(120, 220))
        canvas.line([(px, py), tip], fill=(grey, grey, grey), width=int(rng.integers(1, 3)))
        r = rng.uniform(3, 7)
        colour = _colour(rng, rng.uniform(0, 1), (0.0, 0.9), (0.2, 0.9))
        canvas.ellipse((px - r, py - r, px + r, py + r), fill=colour)
    if setup.labels:  # a data label near an edge, partly hiding whatever lies there
        w, h = rng.uniform(0.25, 0.4) * width, rng.uniform(0.1, 0.18) * height
        x0 = rng.uniform(0, width - w)
        y0 = height - h - rng.uniform(0, 0.05) * height if rng.uniform() < 0.7 else rng.uniform(0, 0.05) * height
        paper = int(rng.integers(225, 255))
        canvas.rectangle((x0, y0, x0 + w, y0 + h), fill=(paper, paper, int(paper * 0.93)))
        labels.rectangle((x0, y0, x0 + w, y0 + h), fill=_CLUTTER)
        for line in range(int(rng.integers(2, 4))):
            ly = y0 + h * (0.25 + 0.25 * line)
            canvas.line([(x0 + 0.08 * w, ly), (x0 + rng.uniform(0.4, 0.92) * w, ly)], fill=(40, 40, 40), width=2)
    for _ in range(int(rng.integers(0, 6))):  # dust
        dx, dy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.5, 2)
        canvas.ellipse((dx - r, dy - r, dx + r, dy + r), fill=(60, 55, 50))


def _texture(pixels: np.ndarray, body: np.ndarray, kind: str, rng: np.random.Generator) -> None:
    if kind == "plain":
        return
    height, width = body.shape
    if kind == "speckle":
        spots = rng.uniform(0, 1, (height, width)) < 0.04
        pixels[spots & body] *= 0.7
    else:
        y, x = np.mgrid[0:height, 0:width]
        angle = rng.uniform(0, math.pi)
        stripes = np.sin((x * math.cos(angle) + y * math.sin(angle)) * rng.uniform(0.15, 0.4)) > 0.6
        pixels[stripes & body] *= 0.8


def draw(species: Species, setup: Setup, rng: np.random.Generator,
         absent: float = 0.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One individual: an H×W×3 uint8 photo and the visible mask of each of its structures.

    With `absent` > 0, each structure is left off the specimen with that probability (a broken
    antenna, a lost leg); its mask is then empty.
    """
    width, height = setup.size
    parts = TAXA[species.taxon].parts(species.traits, rng)
    missing = {name for name in species.structures if rng.uniform() < absent}
    pose = _pose(setup, rng)
    canvas = Image.fromarray(np.clip(_background(setup, rng), 0, 255).astype(np.uint8))
    labels = Image.new("L", (width, height), 0)
    paint, label = ImageDraw.Draw(canvas), ImageDraw.Draw(labels)
    index = {name: i + 1 for i, name in enumerate(species.structures)}
    for part in parts:
        if part.structure in missing:
            continue
        _draw_part(paint, part, pose, _shade(species.palette[part.role], rng), pose[1])
        _draw_part(label, part, pose, index.get(part.structure, _COVER), pose[1])
    _clutter(paint, label, setup, pose, rng)
    label_map = np.asarray(labels)
    pixels = np.asarray(canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))).astype(np.float32)
    _texture(pixels, (label_map > 0) & (label_map < _CLUTTER), species.texture, rng)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    falloff = 1 - setup.vignette * (((x / width - 0.5) ** 2 + (y / height - 0.5) ** 2) * 2)
    cast = np.array([1 + setup.warmth, 1.0, 1 - setup.warmth], dtype=np.float32)
    pixels = pixels * (setup.light * falloff)[..., None] * cast + rng.normal(0, setup.noise, pixels.shape)
    image = np.clip(pixels, 0, 255).astype(np.uint8)
    masks = {name: label_map == value for name, value in index.items()}
    return image, masks

