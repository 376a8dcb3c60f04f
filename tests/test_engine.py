"""The engine against Meta's own video predictor, and the palindrome's gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam2pal.engine.frames import Encoder, FeatureCache, Frame, resize_masks
from sam2pal.engine.palindrome import AugmentConfig, augment, palindrome_step, training_mode
from sam2pal.engine.points import PointPrompter
from sam2pal.engine.propagate import Propagator
from sam2pal.engine.tracking import condition_on_mask, track
from sam2pal.errors import SamPalError
from sam2pal.io.templates import load_coco_templates
from sam2pal.model.adapters import AdapterConfig, prepare
from sam2pal.model.build import config_file
from sam2pal.synthetic import draw_specimen

from conftest import IMAGE_SIZE


def _video_predictor_logits(checkpoint, folder, masks):
    """Meta's SAM2VideoPredictor on a two-frame video: template (frame 0) then specimen."""
    from sam2.build_sam import build_sam2_video_predictor

    side = IMAGE_SIZE // 16
    predictor = build_sam2_video_predictor(
        config_file("sam2.1-tiny"),
        str(checkpoint),
        device="cpu",
        hydra_overrides_extra=[
            f"++model.image_size={IMAGE_SIZE}",
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{side},{side}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{side},{side}]",
        ],
    )
    state = predictor.init_state(str(folder))
    for obj_id, mask in enumerate(masks):
        predictor.add_new_mask(state, 0, obj_id, mask)
    frames = dict((index, logits) for index, _, logits in predictor.propagate_in_video(state))
    return frames[1]


def test_logits_equal_sam2_video_predictor(tmp_path, tiny, tiny_checkpoint, collection):
    templates = load_coco_templates(collection / "templates.json")
    templates.templates = templates.templates[:1]
    video = tmp_path / "video"
    video.mkdir()
    Image.fromarray(templates.templates[0].image).save(video / "00000.jpg", quality=95)
    specimen, _ = draw_specimen(160, 120, 3, seed=7)
    Image.fromarray(specimen).save(video / "00001.jpg", quality=95)
    # both tools read the same JPEG pixels; the template masks are the COCO ones
    templates.templates[0].image = np.asarray(Image.open(video / "00000.jpg").convert("RGB"))
    specimen = np.asarray(Image.open(video / "00001.jpg").convert("RGB"))

    output = Propagator(tiny, templates).logits([specimen])
    ours = torch.nn.functional.interpolate(
        output.low_res_logits.float(), size=specimen.shape[:2], mode="bilinear", align_corners=False
    )
    reference = _video_predictor_logits(tiny_checkpoint, video, list(templates.mask_stack(0)))

    assert ours.shape == reference.shape == (3, 1, 120, 160)
    assert reference.abs().max() > 0.01  # not trivially zero
    if ours.device.type == "cpu":  # the same fp32 arithmetic: the same logits
        assert torch.allclose(ours, reference, atol=1e-4, rtol=0)
    else:  # bf16 on a GPU against Meta's fp32 on the CPU: the same masks, up to a few boundary pixels
        assert ((ours.cpu() > 0) == (reference > 0)).float().mean() > 0.99


def test_batched_specimens_match_one_at_a_time(tiny, collection):
    templates = load_coco_templates(collection / "templates.json")
    propagator = Propagator(tiny, templates)
    images = [draw_specimen(160, 120, 3, seed=s)[0] for s in (1, 2)] + [draw_specimen(90, 200, 3, seed=3)[0]]
    together = propagator.predict(images)
    alone = [propagator.predict([image])[0] for image in images]
    for image, a, b in zip(images, together, alone):
        masks = a.masks()
        assert masks.shape == (3, image.shape[0], image.shape[1])
        assert masks.dtype == bool
        assert np.mean(masks != b.masks()) < 1e-3
        assert np.allclose(a.scores, b.scores, atol=1e-4)


def test_a_prediction_holds_the_models_logits_and_makes_full_size_masks_from_them(tiny, collection):
    """What a batch of predictions keeps is the same few low-resolution maps whatever the photo's
    size; its masks at the photo's size are exactly the full-size interpolation of those maps."""
    propagator = Propagator(tiny, load_coco_templates(collection / "templates.json"), qc=None)
    image = draw_specimen(160, 120, 3, seed=4)[0]
    (prediction,) = propagator.predict([image], [(1200, 1600)])
    side = tiny.image_size // 4
    assert prediction.logits.shape == (3, 1, side, side) and prediction.logits.device.type == "cpu"
    expected = torch.nn.functional.interpolate(prediction.logits, size=(1200, 1600), mode="bilinear",
                                               align_corners=False)[:, 0] > 0
    assert np.array_equal(prediction.masks(), expected.numpy())


def test_template_memory_is_encoded_once(tiny, collection, monkeypatch):
    templates = load_coco_templates(collection / "templates.json")
    propagator = Propagator(tiny, templates)
    calls = []
    original = tiny.sam.forward_image
    monkeypatch.setattr(tiny.sam, "forward_image", lambda pixels: calls.append(pixels.shape[0]) or original(pixels))
    propagator.predict([draw_specimen(160, 120, 3, seed=s)[0] for s in range(3)])
    propagator.predict([draw_specimen(160, 120, 3, seed=9)[0]])
    assert calls == [3, 1]  # one encoder batch per predict call, no template re-encode


def _palindrome_inputs(tiny):
    """Encoder, template frame, its 3 masks, specimen frame: one palindrome's worth of input."""
    encoder = Encoder(tiny)
    template, masks = draw_specimen(160, 120, 3, seed=0)
    specimen, _ = draw_specimen(160, 120, 3, seed=1)
    with torch.no_grad():
        x0, x1 = encoder.encode_images([template]), encoder.encode_images([specimen])
    return encoder, x0, resize_masks(np.stack(list(masks.values())), IMAGE_SIZE), x1


@pytest.mark.parametrize("cycle_memory", ["tracked", "mask"])
def test_palindrome_gradients_reach_phase_one_and_only_trainable_weights(tiny, cycle_memory):
    params = prepare(tiny, AdapterConfig(mode="lora", lora_rank=4))
    trainable = {id(p) for p in params}
    encoder, x0, y0, x1 = _palindrome_inputs(tiny)
    tiny.sam.train()
    out = palindrome_step(encoder, x0, y0, x1, cycle_memory)
    out.forward.high_res_logits.retain_grad()
    out.loss.backward()

    assert out.per_structure.shape == (3,)
    assert torch.isfinite(out.loss)
    assert out.forward.high_res_logits.grad.abs().sum() > 0  # ŷ1 stays soft: the cycle trains it
    with_grad = [n for n, p in tiny.sam.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert with_grad and all("lora_" in n for n in with_grad)
    assert all(p.grad is None for p in tiny.sam.parameters() if id(p) not in trainable)


def test_structures_split_into_passes_give_the_same_gradient(tiny):
    """The trainer's memory saving on CPU (one structure per backward pass) must not change
    what is learned: the loss is a sum over independent batch rows."""
    params = prepare(tiny, AdapterConfig(mode="lora", lora_rank=4))
    encoder, x0, y0, x1 = _palindrome_inputs(tiny)
    training_mode(tiny.sam)
    palindrome_step(encoder, x0, y0, x1).loss.backward()
    together = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    for row in range(3):
        palindrome_step(encoder, x0, y0[row : row + 1], x1).loss.backward()
    assert any(g.abs().sum() > 0 for g in together)
    for joint, split in zip(together, (p.grad for p in params)):
        assert torch.allclose(joint, split, rtol=1e-3, atol=1e-6)


def test_augment_moves_features_reproducibly():
    frame = Frame([torch.rand(1, 4, 32, 32), torch.rand(1, 4, 16, 16), torch.rand(1, 8, 8, 8)])
    first = augment(frame, AugmentConfig(), torch.Generator().manual_seed(3))
    again = augment(frame, AugmentConfig(), torch.Generator().manual_seed(3))
    assert [level.shape for level in first.levels] == [level.shape for level in frame.levels]
    assert all(torch.equal(a, b) for a, b in zip(first.levels, again.levels))
    assert not torch.allclose(first.levels[2], frame.levels[2])
    still = augment(frame, AugmentConfig(flip=0.0, shift=0.0, scale=(1.0, 1.0)), torch.Generator())
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(still.levels, frame.levels))


def test_feature_cache_evicts_least_recently_used():
    frame = Frame([torch.zeros(1, 1, 16, 16)])  # 1024 bytes
    cache = FeatureCache(max_bytes=2500)
    cache.put("a", frame)
    cache.put("b", frame)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", frame)
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2 and cache.nbytes == 2048


def test_feature_cache_spills_to_disk_and_reads_back_exactly(tmp_path):
    frames = {k: Frame([torch.rand(1, 2, 16, 16), torch.rand(1, 4, 8, 8)]) for k in "abc"}  # 3072 bytes each
    cache = FeatureCache(max_bytes=7000, spill_dir=tmp_path)
    for key, frame in frames.items():
        cache.put(key, frame)
    folder = next(tmp_path.iterdir())
    assert len(cache) == 2 and len(list(folder.glob("*.safetensors"))) == 1  # "a" went to disk
    back = cache.get("a")
    assert cache.disk_reads == 1 and cache.misses == 0
    assert all(torch.equal(x, y) for x, y in zip(back.levels, frames["a"].levels))
    assert cache.get("b") is not None  # "b" was pushed out by "a" coming back, and read from disk
    assert cache.disk_reads == 2
    for spilled in folder.glob("*.safetensors"):
        spilled.write_bytes(b"damaged")
    assert cache.get("c") is None and cache.misses == 1  # damaged on disk: encode again, no error
    cache.close()
    assert not folder.exists()


def test_feature_cache_dir_that_cannot_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SamPalError, match="--feature-cache-dir"):
        FeatureCache(spill_dir=blocker / "sub")


def test_first_self_attention_runs_once_per_image_with_the_same_result(tiny):
    """Rows that show one image share memory attention's first self-attention: same logits, same
    gradients, K-fold fewer rows through it."""
    params = prepare(tiny, AdapterConfig(mode="lora", lora_rank=4))
    encoder, x0, y0, x1 = _palindrome_inputs(tiny)
    training_mode(tiny.sam)
    template = encoder.flatten(x0.expand(3))
    with torch.no_grad():
        memory = condition_on_mask(tiny.sam, template, y0)
    rows_seen = []
    tiny.sam.memory_attention.layers[0].self_attn.register_forward_hook(
        lambda module, args, output: rows_seen.append(output.shape[0])
    )
    shared = x1.expand(3)
    frames = {1: Frame(shared.levels), 3: shared}  # the same rows, unmarked and marked as one image
    results = {}
    for rows_per_image, frame in frames.items():
        for p in params:
            p.grad = None
        output = track(tiny.sam, encoder.flatten(frame), [memory])
        output.high_res_logits.sum().backward()
        results[rows_per_image] = (output.high_res_logits.detach(), [p.grad.clone() for p in params])
    assert rows_seen == [3, 1]
    (logits_1, grads_1), (logits_3, grads_3) = results[1], results[3]
    assert logits_1.abs().max() > 0.01
    assert torch.allclose(logits_1, logits_3, atol=1e-5, rtol=0)
    assert any(g.abs().sum() > 0 for g in grads_1)
    for alone, shared in zip(grads_1, grads_3):  # equal up to float summation order
        assert torch.allclose(alone, shared, rtol=1e-3, atol=1e-5 * float(alone.abs().max()))


def test_clicks_on_one_image_read_and_encode_it_once(tiny):
    image, _ = draw_specimen(160, 120, 3, seed=4)
    reads = []

    def load():
        reads.append(1)
        return image

    prompter = PointPrompter(tiny)
    first = prompter.mask([(40.0, 60.0, 1)], (120, 160), "a", load)
    again = prompter.mask([(40.0, 60.0, 1), (100.0, 20.0, 0)], (120, 160), "a", load)
    assert len(reads) == 1 and prompter.cache.misses == 1
    assert first.shape == again.shape == (120, 160) and first.dtype == bool
    fresh = PointPrompter(tiny).mask([(40.0, 60.0, 1), (100.0, 20.0, 0)], (120, 160), "b", lambda: image)
    assert again.any() and np.array_equal(again, fresh)  # cached features: the mask a fresh encode gives
    with pytest.raises(SamPalError, match="click at least one point"):
        prompter.mask([], (120, 160), "a", load)
