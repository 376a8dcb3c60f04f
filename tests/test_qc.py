"""Quality check numbers and flags, and the orientation search that maximises them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2pal.engine import propagate
from sam2pal.engine.frames import Frame
from sam2pal.engine.orientation import SEARCHES, orient, restore
from sam2pal.engine.propagate import Propagator
from sam2pal.engine.qc import QCConfig, TemplateTruth, assess
from sam2pal.engine.tracking import TrackOutput
from sam2pal.io.templates import load_coco_templates
from sam2pal.synthetic import draw_specimen


@pytest.mark.parametrize("name", SEARCHES["rot4flip"])
def test_restore_undoes_orient(name):
    image = np.random.default_rng(0).integers(0, 255, (5, 8, 3), dtype=np.uint8)
    turned = orient(image, name)
    assert turned.shape[:2] == ((8, 5) if name.endswith(("90", "270")) else (5, 8))
    masks = np.stack([turned[..., 0] > 100, turned[..., 1] > 50])
    assert np.array_equal(restore(masks, name), np.stack([image[..., 0] > 100, image[..., 1] > 50]))


def _output(masks: torch.Tensor) -> TrackOutput:
    """Logits +8 inside, -8 outside for (N, h, w) bool masks."""
    logits = (masks.float() * 16 - 8)[:, None]
    n = masks.shape[0]
    return TrackOutput(logits, logits, torch.zeros(n, 8), torch.ones(n, 1), torch.ones(n))


def test_assess_numbers_and_flags():
    template = torch.zeros(2, 8, 8, dtype=torch.bool)
    template[0, :4, :4] = True  # 16 px
    template[1, :2, :2] = True  # 4 px
    truth = TemplateTruth(Frame([torch.zeros(1, 1, 2, 2)]), template, torch.tensor([True, True]))
    pred = torch.zeros(2, 8, 8, dtype=torch.bool)
    pred[0, :2, :4] = True  # half the template's area
    round_trip = torch.tensor([0.8, 0.2])
    (head, eye), = assess(_output(pred), round_trip, [truth], 2, QCConfig(area_ratio_range=(0.6, 2.0)))
    assert head.round_trip_iou == pytest.approx(0.8) and head.area_ratio == pytest.approx(0.5)
    assert head.confidence == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item(), abs=1e-4)
    assert head.flags == ["area_ratio"]
    assert eye.confidence == 0 and eye.area_ratio == 0
    assert eye.flags == ["empty", "low_round_trip_iou", "low_confidence", "area_ratio"]


def test_orientation_search_keeps_the_best_turn_and_maps_masks_back(tiny, collection, monkeypatch):
    templates = load_coco_templates(collection / "templates.json")
    propagator = Propagator(tiny, templates, qc=QCConfig(), orientation="rot4")

    def favour_rot90(encoder, frame, output, truths, count):
        scores = torch.full((frame.batch, count), 0.1)
        scores[1::4] = 0.9  # variants are ordered rot0, rot90, rot180, rot270 per specimen
        return scores.flatten()

    monkeypatch.setattr(propagate, "round_trip_iou", favour_rot90)
    images = [draw_specimen(160, 120, 3, seed=1)[0], draw_specimen(100, 140, 3, seed=2)[0]]
    results = propagator.predict(images)
    for image, result in zip(images, results):
        assert result.orientation == "rot90"
        assert result.masks().shape == (3, *image.shape[:2])
        assert [s.round_trip_iou for s in result.qc] == pytest.approx([0.9] * 3)


def test_real_round_trip_scores_are_in_range(tiny, collection):
    templates = load_coco_templates(collection / "templates.json")
    results = Propagator(tiny, templates, qc=QCConfig()).predict([draw_specimen(160, 120, 3, seed=4)[0]])
    for structure in results[0].qc:
        assert 0.0 <= structure.round_trip_iou <= 1.0
        assert 0.0 <= structure.confidence <= 1.0
    assert results[0].orientation == "rot0"


def test_orientation_search_needs_qc(tiny, collection):
    from sam2pal.errors import SamPalError

    with pytest.raises(SamPalError, match="--orientation-search"):
        Propagator(tiny, load_coco_templates(collection / "templates.json"), orientation="rot4")
