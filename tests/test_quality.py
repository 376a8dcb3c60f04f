"""Quality asserted on the committed synthetic model (tests/fixtures, trained on synthetic
specimens only), on collections from evaluation seeds it never saw. Thresholds sit below the
measured values (in the comments) so that they hold across platforms, and above what a model
that does not look could reach (pasting the template's masks, an unsearched turn)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sam2pal.engine.orientation import orient
from sam2pal.engine.points import PointPrompter
from sam2pal.engine.propagate import Propagator
from sam2pal.engine.qc import QCConfig, round_trip_iou
from sam2pal.engine.tracking import TrackOutput
from sam2pal.io.images import list_images, load_image
from sam2pal.io.templates import load_coco_templates
from sam2pal.metrics import iou
from sam2pal.model.build import describe
from sam2pal.quality import first_templates, score_collection, summarise, truth_masks
from sam2pal.synthetic.domains import write_collection

# evaluation seeds of their own (the benchmark uses 0–11); pretraining never draws eval seeds
SEEDS = (101, 102, 103)
GOOD_OVER_BAD, RIGHT_RANKED = 0.05, 0.6  # measured: round trip 0.16 right vs 0.07 wrong, 75% ranked right


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("held_out")
    return [write_collection(folder / str(seed), "in-domain", seed, templates=3, specimens=4) for seed in SEEDS]


def test_the_synthetic_model_says_what_it_was_trained_on(synthetic):
    assert "trained on synthetic specimens only" in describe(synthetic)
    assert synthetic.image_size == 256 and not synthetic.untrained


def _pasted_template_iou(files) -> float:
    """What copying the template's masks onto each specimen, stretched to its size, would score."""
    template = load_coco_templates(files.templates).templates[0]
    values = []
    for masks in truth_masks(files).values():
        for name, truth in masks.items():
            pasted = Image.fromarray(template.masks[name]).resize(truth.shape[::-1], Image.NEAREST)
            values.append(iou(np.asarray(pasted), truth))
    return float(np.mean(values))


def test_propagation_from_one_template_finds_the_structures(synthetic, held_out):
    scored = [s for files in held_out for s in score_collection(synthetic, files, templates=1, qc=False)]
    mean = summarise("all", scored).iou  # 0.25 measured (a wasp and two bugs)
    assert mean >= 0.2
    assert mean >= np.mean([_pasted_template_iou(files) for files in held_out]) + 0.05


def test_the_web_apps_example_collection_gets_masks_that_find_its_structures(synthetic, tmp_path):
    from sam2pal.ui.handlers import EXAMPLE_SEED

    files = write_collection(tmp_path, "in-domain", EXAMPLE_SEED, templates=2, specimens=12)  # as the app writes it
    mean = summarise("all", score_collection(synthetic, files, templates=2, qc=False)).iou  # 0.21 measured
    assert mean >= 0.18 and mean >= _pasted_template_iou(files) + 0.02  # pasting the template's masks: 0.17


def test_orientation_search_turns_a_rotated_specimen_back(synthetic, held_out):
    files = held_out[2]  # measured: upright 0.41, turned by 180° 0.23, searched 0.41
    upright = summarise("", score_collection(synthetic, files)).iou
    turned = summarise("", score_collection(synthetic, files, turn="rot180")).iou
    searched = score_collection(synthetic, files, turn="rot180", orientation="rot4")
    assert summarise("", searched).iou >= max(turned + 0.1, 0.8 * upright)
    template_set = load_coco_templates(files.templates)
    propagator = Propagator(synthetic, first_templates(template_set, 1), qc=QCConfig(), orientation="rot4")
    image = load_image(list_images(files.specimens)[0])
    (prediction,) = propagator.predict([orient(image, "rot180")])
    assert prediction.orientation == "rot180"  # turning it by 180° again is what makes it upright


def test_qc_scores_a_wrong_mask_below_the_right_one(synthetic, held_out):
    files = held_out[1]
    template_set = first_templates(load_coco_templates(files.templates), 1)
    propagator = Propagator(synthetic, template_set, qc=QCConfig())
    names = template_set.structures
    side = synthetic.image_size

    def output_for(masks: list[np.ndarray]) -> TrackOutput:
        stack = torch.from_numpy(np.stack(masks)).float()[:, None]
        logits = torch.nn.functional.interpolate(stack, size=(side, side), mode="bilinear") * 40 - 20
        count = len(masks)
        return TrackOutput(logits, logits, torch.zeros(count, 64), torch.ones(count, 1), torch.ones(count))

    good, bad = [], []
    for path in list_images(files.specimens):
        truth = truth_masks(files)[path.name]
        frame = propagator.encoder.encode_images([load_image(path)])
        right = [truth[name] for name in names]
        wrong = right[1:] + right[:1]  # every structure given another structure's mask
        good += round_trip_iou(propagator.encoder, frame, output_for(right), propagator.truths, len(names)).tolist()
        bad += round_trip_iou(propagator.encoder, frame, output_for(wrong), propagator.truths, len(names)).tolist()
    assert np.mean(good) > np.mean(bad) + GOOD_OVER_BAD
    assert np.mean(np.array(good) > np.array(bad)) >= RIGHT_RANKED


def test_clicks_inside_structures_give_masks_of_them(synthetic, held_out):
    """One click at each structure's centre, on every specimen of two collections."""
    prompter = PointPrompter(synthetic)
    scores, hits = [], []
    for files in held_out[1:]:
        truth = truth_masks(files)
        for path in list_images(files.specimens):
            image = load_image(path)
            for name, mask in truth[path.name].items():
                ys, xs = np.nonzero(mask)
                if len(xs) < 50:
                    continue
                inside = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
                clicked = prompter.mask([(float(xs[inside]), float(ys[inside]), 1)], image.shape[:2], str(path),
                                        lambda: image)
                scores.append(iou(clicked, mask))
                hits.append(bool(clicked[ys[inside], xs[inside]]))
    assert np.mean(scores) >= 0.08 and np.mean(hits) >= 0.25  # measured on seeds 101-105: IoU 0.15, inside 35%


def test_the_quality_benchmark_prints_its_table_and_writes_its_numbers(tmp_path, capsys):
    from sam2pal.cli import main

    assert main(["bench", "--quality", "--collections", "1", "--specimens", "2", "--finetune-seeds", "0",
                 "--device", "cpu", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "trained on synthetic specimens only" in printed
    for row in ("| all, 1 template |", "| thin, 3 templates |", "| rot180 |", "| upright specimens | round-trip IoU |"):
        assert row in printed
    numbers = json.loads((tmp_path / "quality.json").read_text())
    assert 0 <= numbers["zero_shot"]["all, 1 template"]["iou"] <= 1 and numbers["finetuning"] == {}
    tables = [line for line in (tmp_path / "quality.md").read_text().splitlines() if line.startswith("|---")]
    assert len(tables) == 4  # zero-shot, per structure, orientation, QC (no fine-tuning rows asked for)
