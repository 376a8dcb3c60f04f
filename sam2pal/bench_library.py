"""`sam2pal bench --library`: an adapter library over many collections, on synthetic domains.

Numbers, not tests. Each collection (in-domain species, the new imaging setup, the unseen
taxon; `seeds` collections of each) gets its own palindrome-fine-tuned adapter, added to one
library with its training photos as references. On each collection's test photos (never
trained on, never references) it reports how often the selector picks the collection's own
adapter, and the IoU with the library, with one adapter fine-tuned on every collection in turn
(each round starting from the last, `--init-adapter`), and with the base model.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from sam2pal.engine.frames import Encoder
from sam2pal.engine.selector import choose, embed, floor
from sam2pal.engine.trainer import TrainConfig, Trainer
from sam2pal.errors import SamPalError
from sam2pal.io.images import list_images, load_photo
from sam2pal.io.templates import load_coco_templates
from sam2pal.model.adapters import load_adapter
from sam2pal.model.build import describe, load_model
from sam2pal.model.library import AdapterLibrary
from sam2pal.quality import score_collection
from sam2pal.synthetic.domains import specimen_subset, write_collection

DOMAINS = ("in-domain", "new-setup", "unseen-taxon")
_TRAIN, _TEST = 12, 12


def _model_size(path: Path, model) -> np.ndarray:
    """The photo as `adapters add` and `predict --adapters` embed it."""
    return load_photo(path, model.image_size, model.image_size).image


def _mean_iou(scored) -> float:
    return float(np.mean([s.iou for s in scored])) if scored else float("nan")


def run_library(model: str, image_size: int | None, device: str, seeds: int, epochs: int) -> dict:
    if seeds < 1 or epochs < 1:
        raise SamPalError("--finetune-seeds and --finetune-epochs must be at least 1 for --library")
    base = load_model(model, image_size, device)
    encoder = Encoder(base)
    print(f"# sam2pal bench --library: {describe(base)}\nsynthetic only: {seeds} collection(s) per domain "
          f"({', '.join(DOMAINS)}), 3 templates, {_TRAIN} training photos (also the selector's references) and "
          f"{_TEST} test photos each; LoRA, {epochs} epochs per adapter\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="sam2pal-library-") as tmp:
        root = Path(tmp)
        library = AdapterLibrary(root / "library")
        collections = []
        began = time.perf_counter()
        for domain in DOMAINS:
            for seed in range(seeds):
                name = f"{domain}-{seed}"
                files = write_collection(root / name, domain, 200 + seed, templates=3, specimens=_TRAIN + _TEST,
                                         purpose="finetune")
                paths = list_images(files.specimens)
                train, test = paths[:_TRAIN], specimen_subset(files, paths[_TRAIN:], "test")
                templates = load_coco_templates(files.templates)
                loaded = load_model(model, image_size, device)
                result = Trainer(loaded, templates, train, root / f"{name}-adapter",
                                 TrainConfig(epochs=epochs, seed=seed)).run()
                library.add(name, result.adapter_dir, embed(encoder, [_model_size(p, base) for p in train]),
                            [p.name for p in train])
                collections.append((name, files, templates, train, test))
        train_seconds = time.perf_counter() - began
        references = {e.name: library.references(e.name) for e in library.entries()}
        floors = {name: floor(vectors) for name, vectors in references.items()}
        rows, right, total = [], 0, 0
        joint_dir, joint_model = None, None
        for name, files, templates, train, _ in collections:  # one adapter through every collection in turn
            joint_model = load_model(model, image_size, device)
            config = TrainConfig(epochs=epochs, seed=0, init_adapter=joint_dir)
            joint_dir = Trainer(joint_model, templates, train, root / f"joint-after-{name}", config).run().adapter_dir
        for name, files, templates, _, test in collections:
            photos = [_model_size(p, base) for p in list_images(test.specimens)]
            choices = [choose(v, references, 0.5, floors) for v in embed(encoder, photos)]
            right += sum(c.adapter == name for c in choices)
            total += len(choices)
            scored = []
            for adapter in sorted({c.adapter or "" for c in choices}):
                picked = [p for p, c in zip(list_images(test.specimens), choices) if (c.adapter or "") == adapter]
                loaded = load_model(model, image_size, device)
                if adapter:
                    load_adapter(loaded, library.adapter_dir(adapter))
                scored += score_collection(loaded, specimen_subset(files, picked, f"routed-{adapter or 'base'}"), templates=3,
                                           qc=False)
            joint = load_model(model, image_size, device)
            load_adapter(joint, joint_dir)
            rows.append((name, sum(c.adapter == name for c in choices) / len(choices), _mean_iou(scored),
                         _mean_iou(score_collection(joint, test, templates=3, qc=False)),
                         _mean_iou(score_collection(load_model(model, image_size, device), test, templates=3, qc=False))))
        sizes = [e.size_bytes for e in library.entries()]
    lines = ["| collection | selector picks its own adapter | IoU library | IoU one adapter, all in turn | IoU base |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {a:.0%} | {lib:.3f} | {joint:.3f} | {b:.3f} |" for n, a, lib, joint, b in rows]
    means = [float(np.mean([r[i] for r in rows])) for i in range(2, 5)]
    lines.append(f"| all ({total} test photos) | {right / total:.1%} | {means[0]:.3f} | {means[1]:.3f} | {means[2]:.3f} |")
    print("\n".join(lines), flush=True)
    print(f"\nadapters: {len(rows)}, {np.mean(sizes) / 2**20:.2f} MB each; training all: "
          f"{train_seconds:.0f} s", flush=True)
    return {"model": describe(base), "rows": rows, "selector_accuracy": right / total, "mean_iou": means}
