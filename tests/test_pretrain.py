"""`sam2pal pretrain` and the synthetic specimens it learns from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sam2pal.cli import main
from sam2pal.engine.pretrain import PretrainConfig, sample_examples
from sam2pal.errors import SamPalError
from sam2pal.model.build import describe, load_model
from sam2pal.synthetic.domains import DOMAINS, domain_rng, sample_collection, write_collection
from sam2pal.synthetic.taxa import TAXA


def test_pretraining_is_seeded_and_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, capsys):
    whole, parts = tmp_path / "whole.safetensors", tmp_path / "parts.safetensors"
    common = ["--steps", "3", "--image-size", "128", "--pairs-per-step", "1", "--quiet"]
    assert main(["pretrain", "--out", str(whole), *common]) == 0
    assert main(["pretrain", "--out", str(parts), *common, "--minutes", "0"]) == 0  # stops after one step
    assert "continue with the same command and --resume" in capsys.readouterr().err
    assert parts.with_suffix(".state.pt").is_file()
    assert load_model(f"synthetic:{parts}", None, "cpu").image_size == 128  # the weights so far are usable
    assert main(["pretrain", "--out", str(parts), *common, "--resume"]) == 0
    a, b = load_file(str(whole)), load_file(str(parts))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = load_model(f"synthetic:{whole}", None, "cpu")
    assert model.image_size == 128 and "trained on synthetic specimens only" in describe(model)


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "m.safetensors"
    assert main(["pretrain", "--out", str(out), "--steps", "2", "--image-size", "128", "--quiet", "--minutes", "0"]) == 0
    assert main(["pretrain", "--out", str(out), "--steps", "5", "--image-size", "128", "--quiet", "--resume"]) == 2


def test_a_missing_synthetic_checkpoint_names_what_exists(tmp_path):
    with pytest.raises(SamPalError, match="sam2pal-synthetic-999.safetensors.*found: sam2pal-synthetic-256"):
        load_model("synthetic:999", None, "cpu")
    with pytest.raises(SamPalError, match="not found"):
        load_model(f"synthetic:{tmp_path / 'none.safetensors'}", None, "cpu")


def test_training_pairs_depend_on_seed_and_step_only():
    config = PretrainConfig(pairs_per_step=2)
    first, again, other = sample_examples(config, 7), sample_examples(config, 7), sample_examples(config, 8)
    assert all(torch.equal(a.specimen, b.specimen) and torch.equal(a.target, b.target) for a, b in zip(first, again))
    assert not torch.equal(first[0].specimen, other[0].specimen)
    for example in first:  # clicks fall inside the structure they are for (the first one always)
        for k in range(example.target.shape[0]):
            x, y = example.coords[k, 0].long().tolist()
            if example.target[k].any():
                assert example.target[k, 0, y, x] == 1


def test_evaluation_and_pretraining_draw_different_collections():
    pretrain = sample_collection("in-domain", domain_rng("in-domain", "pretrain", 0, 0))
    evaluation = sample_collection("in-domain", domain_rng("in-domain", "eval", 0))
    assert pretrain.species.traits != evaluation.species.traits


@pytest.mark.parametrize("taxon", sorted(TAXA))
def test_every_body_plan_draws_visible_structures_with_thin_ones_marked(taxon):
    from sam2pal.synthetic.render import draw, sample_setup, sample_species

    rng = np.random.default_rng(3)
    species = sample_species(taxon, rng)
    image, masks = draw(species, sample_setup(rng), rng)
    assert image.dtype == np.uint8 and image.ndim == 3 and 3 <= len(species.structures) <= 6
    assert set(masks) == set(species.structures)
    covered = np.zeros(image.shape[:2], dtype=int)
    for mask in masks.values():
        covered += mask
    assert covered.max() <= 1  # visible masks never overlap
    if taxon != "random":
        assert species.thin  # antennae or legs


def test_written_collections_have_templates_showing_every_structure(tmp_path):
    files = write_collection(tmp_path / "c", "unseen-taxon", 4, templates=2, specimens=3)
    assert files.taxon == "weevil" and "weevil" not in DOMAINS["in-domain"].taxa
    from sam2pal.io.templates import load_coco_templates
    from sam2pal.quality import truth_masks

    templates = load_coco_templates(files.templates)
    assert all(set(t.masks) == set(files.structures) for t in templates.templates)
    assert len(truth_masks(files)) == 3
