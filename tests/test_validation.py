"""Honest validation (held-out templates) and 'not annotated' versus 'absent', in training and
prediction: exact checks of which data reaches which computation (on the synthetic model where a
memory must visibly change a prediction; random weights barely listen to their memory)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sam2pal.engine.trainer as trainer_module
from sam2pal.api import load_templates
from sam2pal.engine.propagate import Propagator
from sam2pal.engine.train_config import split_templates
from sam2pal.engine.trainer import LOG_NAME, VALIDATION_NAME, TrainConfig, Trainer
from sam2pal.errors import SamPalError
from sam2pal.io.images import list_images
from sam2pal.io.templates import TemplateSet
from sam2pal.metrics import iou
from sam2pal.engine.propagate import full_resolution
from sam2pal.synthetic import draw_specimen, write_collection


def _without(template_set: TemplateSet, index: int, name: str, absent: bool) -> TemplateSet:
    """The set with `name` dropped from template `index`: not annotated, or marked absent."""
    templates = list(template_set.templates)
    template = templates[index]
    masks = {k: v for k, v in template.masks.items() if k != name}
    templates[index] = type(template)(template.name, template.path, template.image, masks,
                                      template.absent | ({name} if absent else set()))
    return TemplateSet(template_set.structures, templates)


def _rows(output, count: int, k: int) -> torch.Tensor:
    return output.low_res_logits.reshape(-1, count, *output.low_res_logits.shape[1:])[:, k]


def test_split_holds_out_about_one_in_five_and_k_fold_covers_every_template():
    assert split_templates(1, 5, 0, 0) == ([0], [])
    train, held = split_templates(2, 5, 0, 0)
    assert len(held) == 1 and sorted(train + held) == [0, 1]
    assert len(split_templates(10, 5, 0, 0)[1]) == 2
    folds = [split_templates(7, 3, f, 3)[1] for f in range(3)]
    assert sorted(i for fold in folds for i in fold) == list(range(7))
    with pytest.raises(SamPalError, match="--fold 3"):
        TrainConfig(folds=3, fold=3)


def test_a_structure_not_annotated_on_a_template_gets_no_memory_from_it(synthetic, collection):
    templates = load_templates(collection / "templates.json")  # 2 templates: head, wing, eye
    partial = _without(templates, 1, "eye", absent=False)
    specimen = draw_specimen(160, 120, 3, seed=21)[0]
    grouped = Propagator(synthetic, partial, qc=None).logits([specimen])
    only_first = Propagator(synthetic, TemplateSet(templates.structures, templates.templates[:1]), qc=None).logits([specimen])
    both = Propagator(synthetic, templates, qc=None).logits([specimen])
    eye = templates.structures.index("eye")
    assert torch.allclose(_rows(grouped, 3, eye), _rows(only_first, 3, eye), atol=1e-4)
    assert not torch.allclose(_rows(grouped, 3, eye), _rows(both, 3, eye), atol=1e-3)
    for k in (0, 1):  # the others still see both templates
        assert torch.allclose(_rows(grouped, 3, k), _rows(both, 3, k), atol=1e-4)


def test_a_structure_marked_absent_is_remembered_as_absent(synthetic, collection):
    templates = load_templates(collection / "templates.json")
    absent = _without(templates, 1, "eye", absent=True)
    not_annotated = _without(templates, 1, "eye", absent=False)
    specimen = draw_specimen(160, 120, 3, seed=22)[0]
    eye = templates.structures.index("eye")
    with_absent = _rows(Propagator(synthetic, absent, qc=None).logits([specimen]), 3, eye)
    skipped = _rows(Propagator(synthetic, not_annotated, qc=None).logits([specimen]), 3, eye)
    assert absent.annotated(1)[eye] and not not_annotated.annotated(1)[eye]
    assert not torch.allclose(with_absent, skipped, atol=1e-3)  # the absent memory is used


@pytest.mark.parametrize("absent", [False, True])
def test_training_uses_annotated_rows_only_and_trains_absent_as_empty(tiny, collection, tmp_path, monkeypatch, absent):
    templates = load_templates(collection / "templates.json")
    train, _ = split_templates(2, 5, 0, 0)
    changed = _without(templates, train[0], "eye", absent=absent)
    seen = []
    original = trainer_module.palindrome_step
    monkeypatch.setattr(trainer_module, "palindrome_step",
                        lambda encoder, x0, y0, x1, mode: seen.append(y0.clone()) or original(encoder, x0, y0, x1, mode))
    Trainer(tiny, changed, list_images(collection / "specimens"), tmp_path / "a", TrainConfig(epochs=1)).run()
    steps = [json.loads(line) for line in (tmp_path / "a" / LOG_NAME).read_text().splitlines() if '"step"' in line]
    expected = {"head", "wing", "eye"} if absent else {"head", "wing"}
    assert steps and all(set(step["per_structure"]) == expected for step in steps)
    assert all(y0.shape[0] == len(expected) for y0 in seen)
    if absent:
        assert all(not y0[templates.structures.index("eye")].any() for y0 in seen)  # target: empty


def test_validation_scores_held_out_templates_that_are_never_trained_on(tiny, tmp_path):
    folder = tmp_path / "five"
    write_collection(folder, templates=5, specimens=2, structures=3, size=(160, 120))
    templates = load_templates(folder / "templates.json")
    out = tmp_path / "adapter"
    config = TrainConfig(epochs=2, mode="full", lr=1e-3, augment=False)  # free to memorise
    trainer = Trainer(tiny, templates, list_images(folder / "specimens"), out, config)
    result = trainer.run()
    report = json.loads((out / VALIDATION_NAME).read_text())
    names = [t.name for t in templates.templates]
    assert len(report["held_out"]) == 1 and set(report["held_out"]) | set(report["trained_on"]) == set(names)
    steps = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines() if '"step"' in line]
    assert steps and not {t for s in steps for t in s["templates"]} & set(report["held_out"])  # never a loss target
    # the last epoch's score is the held-out template predicted from the trained ones, nothing else
    held = names.index(report["held_out"][0])
    trained = TemplateSet(templates.structures, [templates.templates[i] for i in trainer.split.train_templates])
    output = Propagator(tiny, trained, qc=None).logits([templates.templates[held].image])
    height, width = templates.templates[held].image.shape[:2]
    predicted = full_resolution(output.low_res_logits, height, width)
    truth = templates.mask_stack(held)
    expected = np.mean([iou(predicted[k], truth[k]) for k in range(3)])
    assert result.validation[-1]["mean_iou"] == pytest.approx(expected, abs=1e-6)


def test_a_second_round_starts_from_the_earlier_adapter_of_the_same_base(tmp_path, capsys):
    """--init-adapter: epoch 0 validates the adapter started from (so a round only keeps what
    beats it); another base model, or --resume with it, is refused."""
    from sam2pal.cli import main
    from sam2pal.synthetic.domains import write_collection as write_synthetic_collection

    files = write_synthetic_collection(tmp_path / "c", "in-domain", seed=31, templates=3, specimens=4)
    base = ["train", "--templates", str(files.templates), "--images", str(files.specimens), "--device", "cpu",
            "--quiet", "--epochs", "1", "--steps-per-epoch", "2", "--lr", "2e-3", "--seed", "2"]
    assert main([*base, "--model", "synthetic:256", "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--model", "synthetic:256", "--out", str(tmp_path / "two"),
                 "--init-adapter", str(tmp_path / "one")]) == 0

    first = json.loads((tmp_path / "one" / VALIDATION_NAME).read_text())
    second = json.loads((tmp_path / "two" / VALIDATION_NAME).read_text())
    kept = first["epochs"][first["best_epoch"]]["mean_iou"]
    assert second["epochs"][0]["mean_iou"] == pytest.approx(kept, abs=1e-6)
    assert second["init_adapter"] == str(tmp_path / "one") and first["init_adapter"] is None
    # the base model is scored beside it: what the first round's zero-shot epoch scored
    assert second["zero_shot_mean_iou"] == pytest.approx(first["epochs"][0]["mean_iou"], abs=1e-6)
    assert second["init_adapter_mean_iou"] == second["epochs"][0]["mean_iou"] and first["init_adapter_mean_iou"] is None
    capsys.readouterr()

    assert main([*base, "--model", "random:tiny", "--image-size", "256", "--out", str(tmp_path / "three"),
                 "--init-adapter", str(tmp_path / "one")]) == 2
    assert "was trained on synthetic:256" in capsys.readouterr().err
    assert main([*base, "--model", "synthetic:256", "--out", str(tmp_path / "two"), "--resume", str(tmp_path / "two"),
                 "--init-adapter", str(tmp_path / "one")]) == 2
    assert "--init-adapter starts a new one" in capsys.readouterr().err


def test_learning_rate_warms_up_then_decays_and_tensorboard_gets_the_numbers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sam2pal.cli import main
    from sam2pal.engine.trainer import learning_rate_factor
    from sam2pal.synthetic.domains import write_collection as write_synthetic_collection

    assert [round(learning_rate_factor(s, 2, 10), 4) for s in (0, 1, 2, 6, 10)] == [0.3333, 0.6667, 1.0, 0.5, 0.0]
    files = write_synthetic_collection(tmp_path / "c", "in-domain", seed=33, templates=3, specimens=4)
    board = tmp_path / "board"
    assert main(["train", "--templates", str(files.templates), "--images", str(files.specimens), "--device", "cpu",
                 "--quiet", "--model", "synthetic:256", "--out", str(tmp_path / "a"), "--epochs", "2",
                 "--steps-per-epoch", "3", "--lr", "1e-3", "--warmup-steps", "2", "--tensorboard", str(board)]) == 0

    steps = [json.loads(line) for line in (tmp_path / "a" / LOG_NAME).read_text().splitlines()]
    rates = [entry["lr"] for entry in steps if "step" in entry]
    assert rates == pytest.approx([1e-3 * learning_rate_factor(s, 2, 6) for s in range(1, 7)])
    events = EventAccumulator(str(board))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 7))
    assert [e.step for e in events.Scalars("validation/mean_iou")] == [0, 1, 2]
    validation = json.loads((tmp_path / "a" / VALIDATION_NAME).read_text())
    assert events.Scalars("validation/mean_iou")[0].value == pytest.approx(validation["epochs"][0]["mean_iou"])
    assert {tag.split("/")[1] for tag in events.Tags()["scalars"] if tag.startswith("validation/")} >= \
        set(validation["epochs"][0]["validation_iou"])
