"""Body plans ("taxa") of synthetic specimens, drawn in a specimen's own frame.

Coordinates are in body lengths: the body's axis runs along x with the head towards −x, y points
down, the origin is the body's centre. A taxon turns species traits (proportions and appendage
angles drawn once per species) and an individual's variation into a list of parts in drawing
order; later parts cover earlier ones. A part that belongs to no structure (the other legs, the
far antenna, a body segment nobody measures) still covers what lies under it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

# how a part is coloured: the species' palette has one colour per role
ROLES = ("body", "dark", "wing", "append", "eye", "light")


@dataclass
class Part:
    structure: str | None  # None: drawn, covers what is below, belongs to no structure
    kind: str  # "polygon" (closed) or "line" (open polyline with a width)
    points: np.ndarray  # (N, 2) in body lengths
    role: str
    width: float = 0.0  # lines only, in body lengths


def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def limb(start: tuple[float, float], angles: list[float], lengths: list[float]) -> np.ndarray:
    """A jointed appendage: segments at absolute angles (radians, 0 = +x) from `start`."""
    points = [np.array(start, dtype=float)]
    for angle, length in zip(angles, lengths):
        points.append(points[-1] + length * np.array([math.cos(angle), math.sin(angle)]))
    return np.stack(points)


def mirror(points: np.ndarray) -> np.ndarray:
    return points * np.array([1.0, -1.0])


Traits = dict[str, float]


@dataclass
class Taxon:
    name: str
    structures: tuple[str, ...]
    traits: Callable[[np.random.Generator], Traits]
    parts: Callable[[Traits, np.random.Generator], list[Part]]


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _vary(traits: Traits, rng: np.random.Generator, amount: float = 0.05) -> Traits:
    """An individual: every proportion a few percent off the species', every angle a few degrees."""
    out = {}
    for key, value in traits.items():
        if key.startswith("a_"):
            out[key] = value + float(rng.normal(0, 0.12))
        else:
            out[key] = value * (1 + float(rng.normal(0, amount)))
    return out


def _antennae(t: Traits, head_x: float, head_r: float, name: str | None, kinks: int = 2) -> list[Part]:
    """Two antennae from the front of the head; the near one (−y side) is the structure."""
    parts = []
    base_angle = math.pi + t["a_ant"]
    seg = t["ant_len"] / (kinks + 1)
    for side, structure in ((1, None), (-1, name)):
        angles = [base_angle + side * (0.45 + 0.25 * k * t["ant_bend"]) for k in range(kinks + 1)]
        angles = [math.pi - (a - math.pi) if side > 0 else a for a in angles]
        start = (head_x - 0.6 * head_r, side * 0.35 * head_r)
        points = limb(start, angles, [seg] * (kinks + 1))
        parts.append(Part(structure, "line", points, "append", t["ant_w"]))
    return parts


def _legs(t: Traits, xs: tuple[float, ...], name: str | None, y0: float) -> list[Part]:
    """Three legs a side; the front leg on the −y side is the structure."""
    parts = []
    for i, x in enumerate(xs):
        for side in (1, -1):
            out = side * (math.pi / 2) + (i - 1) * 0.55 * -side + side * t["a_leg"] * 0.5
            knee = out + side * 0.5 * (1 if i == 2 else -1)
            points = limb((x, side * y0), [out, knee, knee + side * 0.2], [t["leg_len"] * f for f in (0.35, 0.4, 0.25)])
            structure = name if (i == 0 and side == -1) else None
            parts.append(Part(structure, "line", points, "append", t["leg_w"]))
    return parts


def _beetle_traits(rng: np.random.Generator) -> Traits:
    return {"head_r": _u(rng, 0.09, 0.14), "pron_w": _u(rng, 0.16, 0.24), "pron_l": _u(rng, 0.12, 0.2),
            "ely_l": _u(rng, 0.45, 0.6), "ely_w": _u(rng, 0.2, 0.3), "eye_r": _u(rng, 0.03, 0.05),
            "ant_len": _u(rng, 0.3, 0.6), "ant_w": _u(rng, 0.022, 0.032), "ant_bend": _u(rng, 0.3, 1.2),
            "leg_len": _u(rng, 0.45, 0.7), "leg_w": _u(rng, 0.025, 0.035), "a_ant": 0.0, "a_leg": 0.0}


def _beetle(traits: Traits, rng: np.random.Generator) -> list[Part]:
    t = _vary(traits, rng)
    head_x = -0.5 + t["head_r"]
    pron_x = head_x + t["head_r"] + t["pron_l"] * 0.5
    ely_x = pron_x + t["pron_l"] * 0.5 + t["ely_l"] * 0.5
    parts = _legs(t, (pron_x, ely_x - 0.12, ely_x + 0.08), "leg", 0.1)
    parts += _antennae(t, head_x, t["head_r"], "antenna")
    parts += [
        Part("head", "polygon", ellipse(head_x, 0, t["head_r"], t["head_r"] * 0.85), "dark"),
        Part("pronotum", "polygon", ellipse(pron_x, 0, t["pron_l"] * 0.55, t["pron_w"]), "body"),
        Part("elytra", "polygon", ellipse(ely_x, 0, t["ely_l"] * 0.5, t["ely_w"]), "wing"),
        Part(None, "line", np.array([[ely_x - t["ely_l"] * 0.48, 0], [ely_x + t["ely_l"] * 0.48, 0]]), "dark", 0.008),
        Part("eye", "polygon", ellipse(head_x - t["head_r"] * 0.2, -t["head_r"] * 0.6, t["eye_r"], t["eye_r"] * 0.8), "eye"),
        Part(None, "polygon", ellipse(head_x - t["head_r"] * 0.2, t["head_r"] * 0.6, t["eye_r"], t["eye_r"] * 0.8), "eye"),
    ]
    return parts


def _wasp_traits(rng: np.random.Generator) -> Traits:
    return {"head_r": _u(rng, 0.08, 0.11), "meso_l": _u(rng, 0.18, 0.26), "meso_w": _u(rng, 0.08, 0.12),
            "gas_l": _u(rng, 0.3, 0.45), "gas_w": _u(rng, 0.09, 0.14), "wing_l": _u(rng, 0.45, 0.65),
            "wing_w": _u(rng, 0.09, 0.14), "eye_r": _u(rng, 0.035, 0.055), "ant_len": _u(rng, 0.3, 0.5),
            "ant_w": _u(rng, 0.02, 0.03), "ant_bend": _u(rng, 0.2, 1.0), "leg_len": _u(rng, 0.4, 0.6),
            "leg_w": _u(rng, 0.02, 0.03), "a_ant": 0.0, "a_leg": 0.0, "a_wing": _u(rng, 0.25, 0.6)}


def _wasp(traits: Traits, rng: np.random.Generator) -> list[Part]:
    t = _vary(traits, rng)
    head_x = -0.5 + t["head_r"]
    meso_x = head_x + t["head_r"] + t["meso_l"] * 0.5
    gas_x = meso_x + t["meso_l"] * 0.5 + 0.04 + t["gas_l"] * 0.5
    parts = _legs(t, (meso_x - 0.05, meso_x + 0.02, meso_x + 0.08), None, 0.05)
    parts += _antennae(t, head_x, t["head_r"], "antenna", kinks=1)
    parts += [
        Part("gaster", "polygon", ellipse(gas_x, 0, t["gas_l"] * 0.5, t["gas_w"]), "body"),
        Part(None, "line", np.array([[meso_x + t["meso_l"] * 0.4, 0], [gas_x - t["gas_l"] * 0.4, 0]]), "dark", 0.03),
        Part("mesosoma", "polygon", ellipse(meso_x, 0, t["meso_l"] * 0.5, t["meso_w"]), "dark"),
        Part("head", "polygon", ellipse(head_x, 0, t["head_r"], t["head_r"] * 0.9), "body"),
        Part("eye", "polygon", ellipse(head_x, -t["head_r"] * 0.55, t["eye_r"] * 1.3, t["eye_r"]), "eye"),
    ]
    for side, structure in ((1, None), (-1, "wing")):
        angle = side * t["a_wing"]
        cx = meso_x + math.cos(angle) * t["wing_l"] * 0.5
        cy = side * 0.04 + math.sin(angle) * t["wing_l"] * 0.5
        parts.append(Part(structure, "polygon", ellipse(cx, cy, t["wing_l"] * 0.5, t["wing_w"], angle), "light"))
    return parts


def _ant_traits(rng: np.random.Generator) -> Traits:
    return {"head_r": _u(rng, 0.1, 0.15), "meso_l": _u(rng, 0.22, 0.3), "meso_w": _u(rng, 0.06, 0.09),
            "pet_r": _u(rng, 0.03, 0.045), "gas_l": _u(rng, 0.25, 0.35), "gas_w": _u(rng, 0.11, 0.16),
            "eye_r": _u(rng, 0.025, 0.04), "ant_len": _u(rng, 0.4, 0.6), "ant_w": _u(rng, 0.02, 0.03),
            "ant_bend": _u(rng, 0.8, 1.6), "leg_len": _u(rng, 0.5, 0.8), "leg_w": _u(rng, 0.02, 0.03),
            "a_ant": 0.0, "a_leg": 0.0}


def _ant(traits: Traits, rng: np.random.Generator) -> list[Part]:
    t = _vary(traits, rng)
    head_x = -0.5 + t["head_r"]
    meso_x = head_x + t["head_r"] + t["meso_l"] * 0.5
    pet_x = meso_x + t["meso_l"] * 0.5 + t["pet_r"]
    gas_x = pet_x + t["pet_r"] + t["gas_l"] * 0.5
    parts = _legs(t, (meso_x - 0.07, meso_x, meso_x + 0.07), "leg", 0.04)
    parts += _antennae(t, head_x, t["head_r"], "antenna", kinks=1)
    parts += [
        Part("mesosoma", "polygon", ellipse(meso_x, 0, t["meso_l"] * 0.5, t["meso_w"]), "body"),
        Part("petiole", "polygon", ellipse(pet_x, 0, t["pet_r"], t["pet_r"] * 1.2), "dark"),
        Part("gaster", "polygon", ellipse(gas_x, 0, t["gas_l"] * 0.5, t["gas_w"]), "dark"),
        Part("head", "polygon", ellipse(head_x, 0, t["head_r"], t["head_r"] * 0.95), "body"),
        Part(None, "polygon", ellipse(head_x - t["head_r"] * 0.1, -t["head_r"] * 0.7, t["eye_r"], t["eye_r"] * 0.7), "eye"),
    ]
    return parts


def _moth_traits(rng: np.random.Generator) -> Traits:
    return {"body_l": _u(rng, 0.7, 0.9), "body_w": _u(rng, 0.06, 0.09), "fw_l": _u(rng, 0.55, 0.75),
            "fw_w": _u(rng, 0.2, 0.28), "hw_l": _u(rng, 0.4, 0.55), "hw_w": _u(rng, 0.18, 0.26),
            "ant_len": _u(rng, 0.25, 0.4), "ant_w": _u(rng, 0.02, 0.03), "ant_bend": _u(rng, 0.0, 0.5),
            "a_ant": 0.0, "a_fw": _u(rng, 1.0, 1.35), "a_hw": _u(rng, 1.6, 2.0)}


def _moth(traits: Traits, rng: np.random.Generator) -> list[Part]:
    t = _vary(traits, rng)
    head_x = -t["body_l"] * 0.5 + 0.05
    parts = []
    for wing, length, width, angle, origin in (("hindwing", t["hw_l"], t["hw_w"], t["a_hw"], 0.02),
                                               ("forewing", t["fw_l"], t["fw_w"], t["a_fw"], -0.08)):
        for side in (1, -1):
            a = side * angle
            cx, cy = origin + math.cos(a) * length * 0.5, math.sin(a) * length * 0.5
            parts.append(Part(wing if side == -1 else None, "polygon", ellipse(cx, cy, length * 0.5, width, a), "wing"))
    parts += _antennae(t, head_x, 0.05, "antenna", kinks=1)
    parts.append(Part("body", "polygon", ellipse(0, 0, t["body_l"] * 0.5, t["body_w"]), "body"))
    return parts


def _bug_traits(rng: np.random.Generator) -> Traits:
    return {"head_r": _u(rng, 0.07, 0.1), "pron_w": _u(rng, 0.2, 0.3), "pron_l": _u(rng, 0.14, 0.2),
            "scut": _u(rng, 0.12, 0.2), "hem_l": _u(rng, 0.45, 0.6), "hem_w": _u(rng, 0.2, 0.28),
            "ant_len": _u(rng, 0.35, 0.55), "ant_w": _u(rng, 0.02, 0.03), "ant_bend": _u(rng, 0.2, 0.8),
            "leg_len": _u(rng, 0.45, 0.65), "leg_w": _u(rng, 0.025, 0.035), "a_ant": 0.0, "a_leg": 0.0}


def _bug(traits: Traits, rng: np.random.Generator) -> list[Part]:
    t = _vary(traits, rng)
    head_x = -0.5 + t["head_r"]
    pron_x = head_x + t["head_r"] + t["pron_l"] * 0.45
    hem_x = pron_x + t["pron_l"] * 0.4 + t["hem_l"] * 0.5
    parts = _legs(t, (pron_x, hem_x - 0.1, hem_x + 0.05), "leg", 0.12)
    parts += _antennae(t, head_x, t["head_r"], None, kinks=3)
    front, back = pron_x - t["pron_l"] * 0.5, pron_x + t["pron_l"] * 0.5
    pronotum = np.array([[front, -t["pron_w"] * 0.45], [back, -t["pron_w"]], [back, t["pron_w"]], [front, t["pron_w"] * 0.45]])
    scutellum = np.array([[back - 0.01, -t["scut"] * 0.6], [back + t["scut"], 0], [back - 0.01, t["scut"] * 0.6]])
    parts += [
        Part("hemelytra", "polygon", ellipse(hem_x, 0, t["hem_l"] * 0.5, t["hem_w"]), "wing"),
        Part("pronotum", "polygon", pronotum, "body"),
        Part("scutellum", "polygon", scutellum, "light"),
        Part("head", "polygon", ellipse(head_x, 0, t["head_r"] * 1.1, t["head_r"] * 0.8), "dark"),
    ]
    return parts


def _weevil_traits(rng: np.random.Generator) -> Traits:
    return {"head_r": _u(rng, 0.07, 0.1), "ros_l": _u(rng, 0.18, 0.3), "ros_w": _u(rng, 0.035, 0.05),
            "pron_l": _u(rng, 0.18, 0.24), "pron_w": _u(rng, 0.13, 0.18), "ely_l": _u(rng, 0.4, 0.5),
            "ely_w": _u(rng, 0.18, 0.24), "ant_len": _u(rng, 0.2, 0.3), "ant_w": _u(rng, 0.02, 0.028),
            "a_ant": _u(rng, -0.2, 0.2)}


def _weevil(traits: Traits, rng: np.random.Generator) -> list[Part]:
    """Held out of pretraining: a snout (rostrum) with elbowed antennae halfway along it."""
    t = _vary(traits, rng)
    head_x = -0.5 + t["ros_l"] + t["head_r"]
    pron_x = head_x + t["head_r"] + t["pron_l"] * 0.5
    ely_x = pron_x + t["pron_l"] * 0.5 + t["ely_l"] * 0.5
    mid = head_x - t["head_r"] - t["ros_l"] * 0.5
    parts = []
    for side, structure in ((1, None), (-1, "antenna")):
        out = side * (1.3 + t["a_ant"])
        points = limb((mid, 0), [out, out - side * 1.2], [t["ant_len"] * 0.5, t["ant_len"] * 0.5])
        parts.append(Part(structure, "line", points, "append", t["ant_w"]))
    rostrum = np.array([[head_x - t["head_r"] * 0.5, 0.0], [head_x - t["head_r"] - t["ros_l"], 0.0]])
    parts += [
        Part("rostrum", "line", rostrum, "dark", t["ros_w"]),
        Part("elytra", "polygon", ellipse(ely_x, 0, t["ely_l"] * 0.5, t["ely_w"]), "wing"),
        Part("pronotum", "polygon", ellipse(pron_x, 0, t["pron_l"] * 0.5, t["pron_w"]), "body"),
        Part("head", "polygon", ellipse(head_x, 0, t["head_r"], t["head_r"] * 0.9), "dark"),
    ]
    return parts


def _random_traits(rng: np.random.Generator) -> Traits:
    """A body plan of its own per species: 3-6 structures of random kind, size and place."""
    count = int(rng.integers(3, 7))
    traits: Traits = {"count": count}
    for k in range(count):
        traits[f"kind{k}"] = float(rng.integers(0, 4))  # ellipse, polygon, thick line, thin line
        traits[f"x{k}"] = _u(rng, -0.45, 0.45)
        traits[f"y{k}"] = _u(rng, -0.3, 0.3)
        traits[f"size{k}"] = _u(rng, 0.04, 0.3)
        traits[f"a_{k}"] = _u(rng, -math.pi, math.pi)
        traits[f"seed{k}"] = float(rng.integers(1 << 30))
    return traits


def _random(traits: Traits, rng: np.random.Generator) -> list[Part]:
    t = _vary(traits, rng, 0.04)
    parts = [Part(None, "polygon", ellipse(0, 0, 0.45, 0.16), "body")]
    for k in range(int(round(traits["count"]))):
        shape_rng = np.random.default_rng(int(traits[f"seed{k}"]))
        kind, x, y, size, angle = int(traits[f"kind{k}"]), t[f"x{k}"], t[f"y{k}"], t[f"size{k}"], t[f"a_{k}"]
        role = ROLES[k % len(ROLES)]
        if kind == 0:
            points = ellipse(x, y, size * 0.6, size * shape_rng.uniform(0.25, 0.6), angle)
        elif kind == 1:
            n = int(shape_rng.integers(5, 9))
            radii = size * 0.6 * shape_rng.uniform(0.5, 1.0, n)
            angles = np.sort(shape_rng.uniform(0, 2 * math.pi, n))
            points = np.stack([x + radii * np.cos(angles + angle), y + radii * np.sin(angles + angle)], axis=1)
        else:
            turns = shape_rng.uniform(-0.6, 0.6, 3)
            length = 0.15 + size
            points = limb((x, y), list(angle + np.cumsum(turns)), [length / 3] * 3)
            width = 0.05 if kind == 2 else 0.025
            parts.append(Part(f"part{k + 1}", "line", points, role, width))
            continue
        parts.append(Part(f"part{k + 1}", "polygon", points, role))
    return parts


_RANDOM_NAMES = tuple(f"part{k + 1}" for k in range(6))

TAXA: dict[str, Taxon] = {
    "beetle": Taxon("beetle", ("head", "pronotum", "elytra", "eye", "antenna", "leg"), _beetle_traits, _beetle),
    "wasp": Taxon("wasp", ("head", "mesosoma", "gaster", "wing", "eye", "antenna"), _wasp_traits, _wasp),
    "ant": Taxon("ant", ("head", "mesosoma", "petiole", "gaster", "antenna", "leg"), _ant_traits, _ant),
    "moth": Taxon("moth", ("forewing", "hindwing", "body", "antenna"), _moth_traits, _moth),
    "bug": Taxon("bug", ("head", "pronotum", "scutellum", "hemelytra", "leg"), _bug_traits, _bug),
    "random": Taxon("random", _RANDOM_NAMES, _random_traits, _random),
    "weevil": Taxon("weevil", ("rostrum", "head", "pronotum", "elytra", "antenna"), _weevil_traits, _weevil),
}
PRETRAIN_TAXA = ("beetle", "wasp", "ant", "moth", "bug", "random")
UNSEEN_TAXON = "weevil"
