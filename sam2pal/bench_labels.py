"""`sam2pal bench --labels`: what labelled specimens buy, on shifted synthetic domains.

A label-efficiency curve, numbers not tests: held-out IoU after supervised fine-tuning
(`train --labels --supervised-only`) on 0 (zero-shot), 1, 2, 5, 10 and 20 labelled specimens,
beside palindrome fine-tuning on unlabelled specimens with the same templates. Every fine-tune
takes the same number of optimiser steps and keeps the epoch its own validation picks; the
test specimens are never labels, palindrome specimens or templates. With matplotlib (the
`[plots]` extra) the curve is also drawn as a PNG.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from sam2pal.engine.trainer import TrainConfig, Trainer
from sam2pal.errors import SamPalError
from sam2pal.io.files import atomic_write_bytes
from sam2pal.io.images import list_images
from sam2pal.io.labels import load_labels
from sam2pal.io.templates import TemplateSet, load_coco_templates
from sam2pal.model.adapters import load_weights
from sam2pal.model.build import describe, load_model
from sam2pal.plots import label_curve
from sam2pal.quality import score_collection
from sam2pal.synthetic.domains import CollectionFiles, specimen_subset, write_collection

COUNTS = (0, 1, 2, 5, 10, 20)
DOMAINS = ("new-setup", "unseen-taxon")
_POOL, _UNLABELLED, _TEST = 20, 12, 12  # specimens per collection: label pool, palindrome photos, test


def _fine_tuned_iou(model: str, image_size: int | None, device: str, templates: TemplateSet, specimens: list[Path],
                    labels: TemplateSet | None, config: TrainConfig, out: Path, test: CollectionFiles) -> float:
    loaded = load_model(model, image_size, device)
    result = Trainer(loaded, templates, specimens, out, config, labels=labels).run()
    load_weights(loaded.sam, result.adapter_dir)
    return float(np.mean([s.iou for s in score_collection(loaded, test, templates=len(templates.templates), qc=False)]))


def run_labels(model: str, image_size: int | None, device: str, seeds: int, epochs: int, steps: int,
               out: Path | None = None) -> dict:
    if seeds < 1 or epochs < 1 or steps < 1:
        raise SamPalError("--finetune-seeds, --finetune-epochs and --steps must be at least 1 for --labels")
    described = describe(load_model(model, image_size, device))
    header = [f"# sam2pal bench --labels: {described}",
              f"synthetic only: {seeds} collection(s) per shifted domain, 2 templates, a pool of {_POOL} labelled "
              f"specimens, {_UNLABELLED} unlabelled for palindromes, {_TEST} test specimens; every fine-tune LoRA, "
              f"{epochs} epochs × {steps} steps, the epoch its validation picks", "",
              "| domain | " + " | ".join(f"{n} labels" for n in COUNTS) + " | palindrome |",
              "|---|" + "---|" * (len(COUNTS) + 1)]
    print("\n".join(header), flush=True)
    curve: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sam2pal-labels-") as tmp:
        for domain in DOMAINS:
            scores: dict[str, list[float]] = {str(n): [] for n in COUNTS}
            palindrome = []
            for seed in range(seeds):
                files = write_collection(Path(tmp) / f"{domain}-{seed}", domain, seed, templates=2,
                                         specimens=_POOL + _UNLABELLED + _TEST, purpose="finetune")
                paths = list_images(files.specimens)
                unlabelled, test = paths[_POOL:_POOL + _UNLABELLED], specimen_subset(files, paths[_POOL + _UNLABELLED:], "test_specimens")
                templates = load_coco_templates(files.templates)
                everything = load_labels(files.ground_truth, files.specimens, templates.structures)
                pool = [t for t in everything.templates if t.name in {p.name for p in paths[:_POOL]}]
                for n in COUNTS:
                    if n == 0:
                        loaded = load_model(model, image_size, device)
                        value = float(np.mean([s.iou for s in score_collection(loaded, test, templates=2, qc=False)]))
                    else:
                        config = TrainConfig(epochs=epochs, steps_per_epoch=steps, seed=seed, supervised_only=True)
                        value = _fine_tuned_iou(model, image_size, device, templates, [],
                                                TemplateSet(templates.structures, pool[:n]), config,
                                                Path(tmp) / f"{domain}-{seed}-{n}", test)
                    scores[str(n)].append(value)
                config = TrainConfig(epochs=epochs, steps_per_epoch=steps, seed=seed)
                palindrome.append(_fine_tuned_iou(model, image_size, device, templates, unlabelled, None, config,
                                                  Path(tmp) / f"{domain}-{seed}-palindrome", test))
            row = {"supervised": {n: float(np.mean(v)) for n, v in scores.items()},
                   "palindrome": float(np.mean(palindrome))}
            curve[domain] = row
            line = (f"| {domain} | " + " | ".join(f"{row['supervised'][str(n)]:.3f}" for n in COUNTS)
                    + f" | {row['palindrome']:.3f} |")
            header.append(line)
            print(line, flush=True)
    numbers = {"model": described, "counts": list(COUNTS), "curve": curve}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "labels.json").write_text(json.dumps(numbers, indent=1))
        (out / "labels.md").write_text("\n".join(header) + "\n")
        png = label_curve(curve, COUNTS)
        if png is not None:
            atomic_write_bytes(out / "labels.png", png)
        print(f"{'wrote' if png else 'no matplotlib (pip install sam2pal[plots]): skipped'} {out / 'labels.png'}",
              flush=True)
    return numbers
