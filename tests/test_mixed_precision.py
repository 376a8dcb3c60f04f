"""The CUDA path runs under bf16 autocast; no GPU is here, so the same code runs under CPU bf16
autocast, where a dtype slip (a bf16 tensor meeting a float32 one outside autocast) shows too."""

from __future__ import annotations

import numpy as np
import torch

from sam2pal.api import load_templates
from sam2pal.engine.propagate import Propagator
from sam2pal.engine.qc import QCConfig
from sam2pal.engine.trainer import LOG_NAME, TrainConfig, Trainer
from sam2pal.io.images import list_images
from sam2pal.model.build import load_model
from sam2pal.synthetic import draw_specimen


def test_prediction_and_training_run_under_bf16_autocast(collection, tmp_path):
    model = load_model("synthetic:256", None, "cpu")
    model.mixed_precision = torch.bfloat16
    templates = load_templates(collection / "templates.json")
    specimen = draw_specimen(160, 120, 3, seed=5)[0]
    (prediction,) = Propagator(model, templates, qc=QCConfig(), orientation="rot4").predict([specimen])
    assert prediction.masks().shape == (3, 120, 160) and np.isfinite(prediction.scores).all()
    assert all(q.round_trip_iou is None or 0 <= q.round_trip_iou <= 1 for q in prediction.qc)
    full = load_model("synthetic:256", None, "cpu")
    reference = Propagator(full, templates, qc=None).predict([specimen])[0]
    agree = (reference.masks() == prediction.masks()).mean()
    assert agree > 0.97  # bf16 changes a few boundary pixels, not the masks

    trainer = Trainer(model, templates, list_images(collection / "specimens"), tmp_path / "a",
                      TrainConfig(epochs=1, steps_per_epoch=2))
    trainer.run()
    steps = [line for line in (tmp_path / "a" / LOG_NAME).read_text().splitlines() if '"step"' in line]
    assert len(steps) == 2 and all("NaN" not in line for line in steps)


def test_the_gradient_scaler_of_fp16_training_changes_no_update(collection, tmp_path):
    """--precision fp16 scales the loss on CUDA. fp16 autocast does not run SAM2 on a CPU, so the
    scaler's part is checked here in full precision: scaled by 2^10, unscaled before clipping,
    the steps give exactly the weights of an unscaled run (clipping scaled gradients would not)."""
    templates = load_templates(collection / "templates.json")
    weights = []
    for scaled in (False, True):
        model = load_model("synthetic:256", None, "cpu")
        trainer = Trainer(model, templates, list_images(collection / "specimens"), tmp_path / f"s{scaled}",
                          TrainConfig(epochs=1, steps_per_epoch=2, mode="decoder", lr=1e-3, precision="fp16"))
        assert not trainer.scaler.is_enabled()  # no CUDA here: full precision, nothing to scale
        if scaled:
            trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        trainer.run()
        weights.append([p.detach().clone() for p in trainer.params])
    assert trainer.scaler.get_scale() == 2.0**10  # no overflow, so no step was skipped
    assert all(torch.equal(a, b) for a, b in zip(*weights))
