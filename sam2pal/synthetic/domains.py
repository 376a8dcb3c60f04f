"""Synthetic domains and collections: what pretraining sees, and what it never sees.

A collection is one species photographed on one setup; its specimens are individuals in their
own poses. Random draws are keyed by purpose, domain and seed, so pretraining, evaluation and
fine-tuning experiments never share a collection:
- `in-domain`: the pretraining taxa and backgrounds, new species and setups (evaluation seeds);
- `unseen-taxon`: a body plan pretraining never drew (a weevil, with a snout);
- `new-setup`: known taxa on a background and under a lighting pretraining never saw.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sam2pal.io.masks import encode_rle, mask_area, mask_bbox
from sam2pal.synthetic.render import BACKGROUNDS, Setup, Species, draw, sample_setup, sample_species
from sam2pal.synthetic.taxa import PRETRAIN_TAXA, UNSEEN_TAXON

_PURPOSES = {"pretrain": 0, "eval": 1, "finetune": 2}


@dataclass(frozen=True)
class Domain:
    name: str
    taxa: tuple[str, ...]
    backgrounds: tuple[str, ...]
    harsh: bool = False


DOMAINS = {
    "in-domain": Domain("in-domain", PRETRAIN_TAXA, BACKGROUNDS[:-1]),
    "unseen-taxon": Domain("unseen-taxon", (UNSEEN_TAXON,), BACKGROUNDS[:-1]),
    "new-setup": Domain("new-setup", tuple(t for t in PRETRAIN_TAXA if t != "random"), ("wood",), harsh=True),
}


@dataclass
class Collection:
    species: Species
    setup: Setup

    def draw(self, rng: np.random.Generator, absent: float = 0.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return draw(self.species, self.setup, rng, absent)


def domain_rng(domain: str, purpose: str, *keys: int) -> np.random.Generator:
    """The random stream of one (purpose, domain, keys…): pretraining and evaluation never meet."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; use one of {', '.join(DOMAINS)}")
    return np.random.default_rng(np.random.SeedSequence([_PURPOSES[purpose], zlib.crc32(domain.encode()), *keys]))


def sample_collection(domain: str, rng: np.random.Generator) -> Collection:
    spec = DOMAINS[domain]
    taxon = str(rng.choice(spec.taxa))
    return Collection(sample_species(taxon, rng), sample_setup(rng, spec.backgrounds, spec.harsh))


@dataclass
class CollectionFiles:
    folder: Path
    templates: Path  # COCO of the annotated templates
    specimens: Path  # folder of specimen JPEGs
    ground_truth: Path  # COCO of the specimens' true masks, for `sam2pal evaluate`
    structures: list[str]
    thin: list[str]
    taxon: str


def specimen_subset(files: CollectionFiles, paths: list[Path], name: str) -> CollectionFiles:
    """The collection with only `paths` as its specimens (linked into folder `name`), e.g. the
    test part that fine-tuning never sees; templates and ground truth stay the collection's."""
    folder = files.folder / name
    folder.mkdir(exist_ok=True)
    for path in paths:
        target = folder / path.name
        if not target.exists():
            target.symlink_to(path)
    return CollectionFiles(files.folder, files.templates, folder, files.ground_truth, files.structures,
                           files.thin, files.taxon)


def _coco(structures: list[str]) -> dict:
    return {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(structures)]}


def _add(coco: dict, file_name: str, masks: dict[str, np.ndarray], structures: list[str]) -> None:
    height, width = next(iter(masks.values())).shape
    image_id = len(coco["images"]) + 1
    coco["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    for k, name in enumerate(structures):
        mask = masks[name]
        if not mask.any():
            continue
        coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": k + 1,
                                    "segmentation": encode_rle(mask), "area": mask_area(mask),
                                    "bbox": mask_bbox(mask), "iscrowd": 0})


def write_collection(folder: str | Path, domain: str = "in-domain", seed: int = 0, templates: int = 3,
                     specimens: int = 12, purpose: str = "eval") -> CollectionFiles:
    """One collection on disk: `templates` annotated PNGs in templates.json, `specimens` JPEGs
    (quality 90) in specimens/, their true masks in ground_truth.json, and collection.json."""
    folder = Path(folder)
    (folder / "specimens").mkdir(parents=True, exist_ok=True)
    rng = domain_rng(domain, purpose, seed)
    collection = sample_collection(domain, rng)
    structures = collection.species.structures
    template_coco, truth_coco = _coco(structures), _coco(structures)
    for t in range(templates):
        image, masks = collection.draw(rng)
        for _ in range(20):  # a template shows every structure, as a person would pick one
            if all(mask.any() for mask in masks.values()):
                break
            image, masks = collection.draw(rng)
        name = f"template_{t}.png"
        Image.fromarray(image).save(folder / name)
        _add(template_coco, name, masks, structures)
    for i in range(specimens):
        image, masks = collection.draw(rng)
        name = f"specimen_{i:04d}.jpg"
        Image.fromarray(image).save(folder / "specimens" / name, quality=90)
        _add(truth_coco, name, masks, structures)
    (folder / "templates.json").write_text(json.dumps(template_coco))
    (folder / "ground_truth.json").write_text(json.dumps(truth_coco))
    meta = {"domain": domain, "seed": seed, "purpose": purpose, "taxon": collection.species.taxon,
            "structures": structures, "thin": collection.species.thin, "background": collection.setup.background}
    (folder / "collection.json").write_text(json.dumps(meta, indent=1))
    return CollectionFiles(folder, folder / "templates.json", folder / "specimens", folder / "ground_truth.json",
                           structures, collection.species.thin, collection.species.taxon)
