"""Supervised fine-tuning from labelled specimens (`train --labels`): which data reaches which
loss, the held-out test part, the loss weights, and that the supervised signal does teach."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2pal.api import load_templates
from sam2pal.cli import main
from sam2pal.engine.frames import Encoder, resize_masks
from sam2pal.engine.losses import LossWeights
from sam2pal.engine.palindrome import training_mode
from sam2pal.engine.supervised import Annotated, supervised_step
from sam2pal.engine.trainer import LOG_NAME, VALIDATION_NAME, TrainConfig, Trainer
from sam2pal.errors import SamPalError
from sam2pal.io.images import list_images
from sam2pal.io.labels import load_labels
from sam2pal.io.templates import TemplateSet
from sam2pal.synthetic.domains import write_collection


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A shifted-domain collection: 2 templates, 10 specimens whose ground truth is the labels."""
    folder = tmp_path_factory.mktemp("labelled")
    write_collection(folder, "new-setup", seed=3, templates=2, specimens=10, purpose="finetune")
    return folder


def _annotated(encoder: Encoder, group: TemplateSet, index: int) -> Annotated:
    with torch.no_grad():
        frame = encoder.encode_images([group.templates[index].image])
    size = encoder.loaded.image_size
    return Annotated(frame, resize_masks(group.mask_stack(index), size), group.annotated(index))


def _drop(group: TemplateSet, index: int, name: str, absent: bool) -> TemplateSet:
    items = list(group.templates)
    item = items[index]
    items[index] = type(item)(item.name, item.path, item.image, {k: v for k, v in item.masks.items() if k != name},
                              item.absent | ({name} if absent else set()))
    return TemplateSet(group.structures, items)


def test_only_structures_a_label_annotates_add_loss_and_absent_ones_train_absent(synthetic, labelled):
    templates = load_templates(labelled / "templates.json")
    labels = load_labels(labelled / "ground_truth.json", labelled / "specimens", templates.structures)
    encoder = Encoder(synthetic)
    memory = [_annotated(encoder, templates, i) for i in range(2)]
    every = list(range(len(templates.structures)))
    shown = [k for k in every if labels.annotated(0)[k]]  # a structure missing there has no annotation
    k = shown[1]
    name = templates.structures[k]
    training_mode(synthetic.sam)
    try:
        full = supervised_step(encoder, memory, _annotated(encoder, labels, 0), every, LossWeights())
        not_annotated = supervised_step(encoder, memory, _annotated(encoder, _drop(labels, 0, name, False), 0),
                                        every, LossWeights())
        absent = supervised_step(encoder, memory, _annotated(encoder, _drop(labels, 0, name, True), 0),
                                 every, LossWeights())
    finally:
        synthetic.sam.eval()
    assert full.structures == shown and absent.structures == shown
    assert not_annotated.structures == [j for j in shown if j != k]
    kept = [full.structures.index(j) for j in not_annotated.structures]
    assert torch.allclose(full.per_structure[kept], not_annotated.per_structure, atol=1e-5)  # the rest as before
    assert absent.per_structure[1] != full.per_structure[1]  # trained against an empty mask instead


def test_labels_split_into_a_test_part_that_no_step_ever_trains_on(synthetic, labelled, tmp_path):
    templates = load_templates(labelled / "templates.json")
    labels = load_labels(labelled / "ground_truth.json", labelled / "specimens", templates.structures)
    out = tmp_path / "adapter"
    config = TrainConfig(epochs=2, mode="decoder", seed=1)
    Trainer(synthetic, templates, list_images(labelled / "specimens"), out, config, labels=labels).run()
    validation = json.loads((out / VALIDATION_NAME).read_text())
    held = validation["labels"]["held_out"]
    assert 1 <= len(held) <= 5 and validation["held_out"] == []  # about 1 in 5 of 10 labels; every template is memory
    assert sorted(held + validation["labels"]["trained_on"]) == [f"specimen_{i:04d}.jpg" for i in range(10)]
    steps = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    steps = [s for s in steps if "step" in s]
    used = {name for s in steps for name in s["labels"] + s["specimens"]}
    assert used == set(validation["labels"]["trained_on"])  # every specimen is labelled: no palindrome either
    for entry in validation["epochs"]:
        assert set(entry["test"]) == {"iou", "dice", "pixel_accuracy", "boundary_f1"}
        assert entry["test"]["iou"] == pytest.approx(entry["mean_iou"])
        assert 0.0 <= entry["test"]["boundary_f1"] <= 1.0 and 0.5 < entry["test"]["pixel_accuracy"] <= 1.0


def test_supervised_only_takes_no_palindrome_and_unlabelled_specimens_get_palindromes_otherwise(
        synthetic, labelled, tmp_path):
    templates = load_templates(labelled / "templates.json")
    labels = load_labels(labelled / "ground_truth.json", labelled / "specimens", templates.structures)
    few = TemplateSet(labels.structures, labels.templates[:4])  # specimens 4-9 are unlabelled now
    specimens = list_images(labelled / "specimens")
    for only, palindromes in ((True, False), (False, True)):
        out = tmp_path / f"only-{only}"
        config = TrainConfig(epochs=1, mode="decoder", supervised_only=only)
        Trainer(synthetic, templates, specimens, out, config, labels=few).run()
        steps = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
        names = {n for s in steps if "step" in s for n in s["specimens"]}
        assert bool(names) is palindromes
        assert names <= {p.name for p in specimens[4:]}  # never a labelled one
    with pytest.raises(SamPalError, match="--supervised-only needs labelled specimens"):
        Trainer(synthetic, templates, specimens, tmp_path / "x", TrainConfig(supervised_only=True))


def test_supervised_steps_teach_what_the_label_shows(synthetic, labelled, tmp_path):
    """A handful of steps on one label: its IoU under the adapter rises well above zero-shot
    (the signal reaches the trained weights; validation is about held-out data elsewhere)."""
    templates = load_templates(labelled / "templates.json")
    labels = load_labels(labelled / "ground_truth.json", labelled / "specimens", templates.structures)
    one = TemplateSet(labels.structures, labels.templates[:1])
    trainer = Trainer(synthetic, templates, [], tmp_path / "one", TrainConfig(
        epochs=1, steps_per_epoch=25, mode="decoder", lr=1e-3, warmup_steps=0, supervised_only=True), labels=one)
    before = _label_iou(trainer)
    trainer.run()
    after = _label_iou(trainer)
    assert after > before + 0.1, (before, after)


def _label_iou(trainer: Trainer) -> float:
    """Mean IoU over structures of label 0, predicted as validation predicts (all templates)."""
    trainer.split.test_labels = [0]
    try:
        return float(np.mean(list(trainer.validate().values())))
    finally:
        trainer.split.test_labels = []


def test_a_label_keeps_its_part_when_labels_are_added_and_trained_labels_are_never_tested():
    from sam2pal.engine.validation import split_labels

    names = [f"specimen_{i:04d}.jpg" for i in range(40)]
    _, few = split_labels(names[:10], 5, 0, 0, set())
    train, many = split_labels(names, 5, 0, 0, set())
    assert set(few) <= set(many) and 4 <= len(many) <= 14 and sorted(train + many) == list(range(40))
    _, later = split_labels(names, 5, 0, 0, {names[i] for i in many[:2]})
    assert not set(many[:2]) & set(later) and set(many[2:]) <= set(later)
    assert split_labels(names[:3], 5, 0, 0, set(names[:3])) == ([0, 1, 2], [])  # all trained before: none tested
    assert len(split_labels(names[:2], 5, 3, 0, set())[1]) == 1  # at least one tested when two could be


def test_loss_weights_parse_and_refuse_with_the_field_named():
    assert LossWeights.parse("") == LossWeights()
    weights = LossWeights.parse("dice=2, focal=20,bce=0")
    assert (weights.dice, weights.focal, weights.bce, weights.iou) == (2.0, 20.0, 0.0, LossWeights().iou)
    with pytest.raises(SamPalError, match="unknown term 'tversky'"):
        LossWeights.parse("tversky=1")
    with pytest.raises(SamPalError, match="'focal=lots' needs a number"):
        LossWeights.parse("focal=lots")
    with pytest.raises(SamPalError, match="dice=-1.0 must be zero or more"):
        LossWeights.parse("dice=-1")


def test_labels_with_a_category_the_templates_lack_are_refused(labelled, tmp_path):
    truth = json.loads((labelled / "ground_truth.json").read_text())
    truth["categories"][0]["name"] = "scape"
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(truth))
    structures = load_templates(labelled / "templates.json").structures
    with pytest.raises(SamPalError, match=r"--labels .*gt.json: category 'scape' not among the templates' structures"):
        load_labels(path, labelled / "specimens", structures)
    with pytest.raises(SamPalError, match="labelled specimen image not found: missing.jpg .* pass --images DIR"):
        truth["categories"][0]["name"] = structures[0]
        truth["images"][0]["file_name"] = "missing.jpg"
        path.write_text(json.dumps(truth))
        load_labels(path, labelled / "specimens", structures)


def test_train_labels_from_the_command_line(labelled, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train", "--model", "synthetic:256", "--templates", str(labelled / "templates.json"),
                 "--images", str(labelled / "specimens"), "--labels", str(labelled / "ground_truth.json"),
                 "--out", str(out), "--epochs", "1", "--mode", "decoder", "--loss-weights", "focal=10,bce=0", "--quiet"])
    assert code == 0
    validation = json.loads((out / VALIDATION_NAME).read_text())
    assert validation["labels"]["held_out"] and validation["epochs"][-1]["test"]["iou"] >= 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    code = main(["train", "--model", "synthetic:256", "--templates", str(labelled / "templates.json"),
                 "--images", str(labelled / "specimens"), "--out", str(tmp_path / "x"), "--supervised-only",
                 "--quiet"])
    assert code == 2 and "--supervised-only needs labelled specimens" in capsys.readouterr().err


def test_the_label_efficiency_curve_is_drawn():
    from PIL import Image

    from sam2pal.plots import label_curve

    curve = {"new-setup": {"supervised": {"0": 0.25, "1": 0.26, "5": 0.28, "20": 0.3}, "palindrome": 0.27}}
    with Image.open(io.BytesIO(label_curve(curve, (0, 1, 5, 20)))) as png:
        assert png.format == "PNG" and png.size == (720, 480)


def test_a_label_that_only_marks_a_structure_absent_is_kept(labelled, tmp_path):
    """A correction that removed a structure: no annotation on that image, only 'absent'."""
    truth = json.loads((labelled / "ground_truth.json").read_text())
    structures = load_templates(labelled / "templates.json").structures
    first = truth["images"][0]
    truth["annotations"] = [a for a in truth["annotations"] if a["image_id"] != first["id"]]
    first["structure_status"] = {structures[0]: "absent"}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(truth))
    labels = load_labels(path, labelled / "specimens", structures)
    kept = next(i for i, t in enumerate(labels.templates) if t.name == first["file_name"])
    assert labels.templates[kept].absent == {structures[0]} and labels.annotated(kept)[0]
    assert not any(labels.annotated(kept)[1:])  # the others are not annotated there
