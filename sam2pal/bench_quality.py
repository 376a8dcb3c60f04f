"""`sam2pal bench --quality`: how well a model segments, on synthetic collections it never saw.

One table (markdown) of numbers, not tests: zero-shot propagation from one and three templates,
orientation search on turned specimens, how well the quality check ranks errors, and palindrome
fine-tuning under a domain shift, each with its seconds per specimen. All collections come from
evaluation and fine-tuning seeds, which pretraining never draws.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sam2pal.engine.trainer import TrainConfig, Trainer
from sam2pal.io.images import list_images
from sam2pal.io.templates import load_coco_templates
from sam2pal.model.adapters import load_weights
from sam2pal.model.build import LoadedModel, describe, load_model
from sam2pal.quality import Line, Scored, score_collection, spearman, summarise, worst_overlap
from sam2pal.synthetic.domains import CollectionFiles, specimen_subset, write_collection


def _row(line: Line) -> str:
    return (f"| {line.label} | {line.n} | {line.iou:.3f} | {line.dice:.3f} | {line.boundary_f1:.3f} | "
            f"{line.seconds:.3f} |")


def zero_shot(loaded: LoadedModel, collections: list[CollectionFiles]) -> tuple[list[str], dict]:
    one = [s for files in collections for s in score_collection(loaded, files, templates=1)]
    three = [s for files in collections for s in score_collection(loaded, files, templates=3)]
    lines = ["| structures (in-domain, held-out seeds) | n | IoU | Dice | boundary F1 | s/specimen |",
             "|---|---|---|---|---|---|"]
    numbers = {}
    for label, scored in (("1 template", one), ("3 templates", three)):
        for name, subset in ((f"all, {label}", scored), (f"thin, {label}", [s for s in scored if s.thin]),
                             (f"not thin, {label}", [s for s in scored if not s.thin])):
            line = summarise(name, subset)
            lines.append(_row(line))
            numbers[name] = asdict(line)
    names = sorted({s.structure for s in one})
    lines += ["", "| structure | n | IoU 1 template | IoU 3 templates | Dice 1 / 3 | boundary F1 1 / 3 |",
              "|---|---|---|---|---|---|"]
    for name in names:
        a = summarise(name, [s for s in one if s.structure == name])
        b = summarise(name, [s for s in three if s.structure == name])
        thin = " (thin)" if any(s.thin for s in one if s.structure == name) else ""
        lines.append(f"| {name}{thin} | {a.n} | {a.iou:.3f} | {b.iou:.3f} | {a.dice:.3f} / {b.dice:.3f} | "
                     f"{a.boundary_f1:.3f} / {b.boundary_f1:.3f} |")
        numbers[f"structure {name}"] = {"one": asdict(a), "three": asdict(b)}
    return lines, {"zero_shot": numbers, "_scored_one": one}


def orientation(loaded: LoadedModel, collections: list[CollectionFiles], upright: list[Scored]) -> tuple[list[str], dict, list[Scored]]:
    base = summarise("upright", upright)
    lines = ["| specimens turned | IoU, no search | IoU, rot4 search | rot4 / upright | s/specimen none / rot4 |",
             "|---|---|---|---|---|"]
    numbers, turned_all = {}, []
    for turn in ("rot90", "rot180"):
        plain = [s for files in collections for s in score_collection(loaded, files, turn=turn)]
        searched = [s for files in collections for s in score_collection(loaded, files, turn=turn, orientation="rot4")]
        a, b = summarise(turn, plain), summarise(turn, searched)
        turned_all += plain
        lines.append(f"| {turn} | {a.iou:.3f} | {b.iou:.3f} | {b.iou / base.iou:.0%} | {a.seconds:.3f} / {b.seconds:.3f} |")
        numbers[turn] = {"none": asdict(a), "rot4": asdict(b), "recovered": b.iou / base.iou}
    return lines, numbers, turned_all


_SCORES = {
    "round-trip IoU": lambda s: s.qc_score,
    "decoder IoU estimate": lambda s: s.predicted_iou,
}


def quality_check(upright: list[Scored], turned: list[Scored]) -> tuple[list[str], dict]:
    lines = ["| QC over | score | structures | Spearman(score, IoU) | worst 10% by score among truly worst 10% |",
             "|---|---|---|---|---|"]
    numbers = {}
    for label, scored in (("upright specimens", upright), ("upright + turned (no search)", upright + turned)):
        rated = [s for s in scored if s.qc_score is not None]
        truth = [s.iou for s in rated]
        for name, score in _SCORES.items():
            values = [score(s) for s in rated]
            rho = spearman(values, truth)
            hit, of = worst_overlap(values, truth)
            lines.append(f"| {label} | {name} | {len(rated)} | {rho:.3f} | {hit} of {of} |")
            numbers[f"{label}: {name}"] = {"spearman": rho, "worst_hit": hit, "worst_of": of}
    return lines, numbers


def _split_specimens(files: CollectionFiles, train: int) -> tuple[list[Path], CollectionFiles]:
    """First `train` specimens are the fine-tuning's unlabeled photos; the rest are the test set."""
    paths = list_images(files.specimens)
    return paths[:train], specimen_subset(files, paths[train:], "test_specimens")


def finetuning(model: str, image_size: int | None, device: str, folder: Path, seeds: int, epochs: int) -> tuple[list[str], dict]:
    lines = ["| shifted domain | zero-shot IoU (test) | LoRA tracked | LoRA mask | kept by validation (tracked / mask) | "
             "s/step |", "|---|---|---|---|---|---|"]
    numbers = {}
    for domain in ("unseen-taxon", "new-setup"):
        rows = {"zero": [], "tracked": [], "mask": [], "kept": {"tracked": [], "mask": []}, "step": []}
        for seed in range(seeds):
            files = write_collection(folder / f"{domain}-{seed}", domain, seed, templates=5, specimens=24,
                                     purpose="finetune")
            train, test = _split_specimens(files, 12)
            base = load_model(model, image_size, device)
            rows["zero"] += [s.iou for s in score_collection(base, test, templates=5, qc=False)]
            for memory in ("tracked", "mask"):
                loaded = load_model(model, image_size, device)
                templates = load_coco_templates(files.templates)
                out = folder / f"{domain}-{seed}-{memory}"
                config = TrainConfig(epochs=epochs, cycle_memory=memory, seed=seed)
                began = time.perf_counter()
                result = Trainer(loaded, templates, train, out, config).run()
                rows["step"].append((time.perf_counter() - began) / (epochs * len(train)))

                load_weights(loaded.sam, result.adapter_dir)  # the epoch validation kept
                scored = score_collection(loaded, test, templates=5, qc=False)
                rows[memory] += [s.iou for s in scored]
                rows["kept"][memory].append(result.best_epoch)
        zero, tracked, mask = (float(np.mean(rows[k])) for k in ("zero", "tracked", "mask"))
        kept = " / ".join(",".join(f"e{e}" for e in rows["kept"][m]) for m in ("tracked", "mask"))
        lines.append(f"| {domain} | {zero:.3f} | {tracked:.3f} ({tracked - zero:+.3f}) | {mask:.3f} ({mask - zero:+.3f}) "
                     f"| {kept} | {np.mean(rows['step']):.3f} |")
        numbers[domain] = {"zero_shot": zero, "tracked": tracked, "mask": mask, "kept_epochs": rows["kept"]}
    return lines, numbers


def run_quality(model: str, image_size: int | None, device: str, collections: int, specimens: int,
                seeds: int, epochs: int, out: Path | None = None) -> dict:
    loaded = load_model(model, image_size, device)
    header = [f"# sam2pal bench --quality: {describe(loaded)}",
              f"synthetic collections only: {collections} in-domain collections × {specimens} specimens "
              f"(evaluation seeds 0–{collections - 1}); fine-tuning: {seeds} collection(s) per shifted domain, "
              f"12 unlabeled training and 12 test specimens each, 5 templates (1 held out by validation), "
              f"{epochs} epochs", ""]
    print("\n".join(header), flush=True)
    with tempfile.TemporaryDirectory(prefix="sam2pal-quality-") as tmp:
        folder = Path(tmp)
        files = [write_collection(folder / f"in-domain-{seed}", "in-domain", seed, templates=3, specimens=specimens)
                 for seed in range(collections)]
        zero_lines, zero = zero_shot(loaded, files)
        print("\n".join(zero_lines + [""]), flush=True)
        upright = zero.pop("_scored_one")
        orient_lines, turned_numbers, turned = orientation(loaded, files, upright)
        print("\n".join(orient_lines + [""]), flush=True)
        qc_lines, qc_numbers = quality_check(upright, turned)
        print("\n".join(qc_lines + [""]), flush=True)
        tune_lines, tune = finetuning(model, image_size, device, folder, seeds, epochs) if seeds else ([], {})
        print("\n".join(tune_lines), flush=True)
    numbers = {"model": describe(loaded), **zero, "orientation": turned_numbers, "qc": qc_numbers, "finetuning": tune}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "quality.json").write_text(json.dumps(numbers, indent=1))
        (out / "quality.md").write_text("\n".join(header + zero_lines + [""] + orient_lines + [""] + qc_lines + [""] + tune_lines) + "\n")
    return numbers
