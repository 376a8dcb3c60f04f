"""A small SAM2 of our own, built from Meta's classes and trained on synthetic specimens only.

Pretrained SAM2 weights cannot be downloaded where sam2pal is tested, and random weights segment
nothing. This model (2.5 M parameters, 5 MB in fp16) is `SAM2Base` with a Hiera image encoder,
memory attention, memory encoder and mask decoder at smaller widths and depths. Its checkpoint
is a safetensors file that carries its own config, so it loads without a YAML file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sam2pal.errors import SamPalError
from sam2pal.synthetic import TRAINED_ON

VARIANT = "synthetic-small"
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def _sine(num_pos_feats: int) -> dict:
    return {"_target_": "sam2.modeling.position_encoding.PositionEmbeddingSine", "num_pos_feats": num_pos_feats,
            "normalize": True, "scale": None, "temperature": 10000}


def _rope(side: int, **extra) -> dict:
    return {"_target_": "sam2.modeling.sam.transformer.RoPEAttention", "rope_theta": 10000.0,
            "feat_sizes": [side, side], "embedding_dim": 64, "num_heads": 1, "downsample_rate": 1,
            "dropout": 0.0, **extra}


def small_config(image_size: int) -> dict:
    """The SAM2.1-tiny config at a quarter of its widths and fewer blocks (SAM2_NOTES.md).

    Tracking outputs one mask (no multimask choice by predicted IoU): from a template memory
    there is one right answer, and a single output token is trained directly."""
    side = image_size // 16
    return {
        "_target_": "sam2.modeling.sam2_base.SAM2Base",
        "image_encoder": {
            "_target_": "sam2.modeling.backbones.image_encoder.ImageEncoder",
            "scalp": 1,
            "trunk": {"_target_": "sam2.modeling.backbones.hieradet.Hiera", "embed_dim": 32, "num_heads": 1,
                      "stages": [1, 1, 3, 1], "window_spec": [8, 4, 8, 4], "global_att_blocks": [3, 4],
                      "window_pos_embed_bkg_spatial_size": [7, 7]},
            "neck": {"_target_": "sam2.modeling.backbones.image_encoder.FpnNeck", "position_encoding": _sine(64),
                     "d_model": 64, "backbone_channel_list": [256, 128, 64, 32], "fpn_top_down_levels": [2, 3],
                     "fpn_interp_model": "nearest"},
        },
        "memory_attention": {
            "_target_": "sam2.modeling.memory_attention.MemoryAttention", "d_model": 64, "pos_enc_at_input": True,
            "num_layers": 2,
            "layer": {"_target_": "sam2.modeling.memory_attention.MemoryAttentionLayer", "activation": "relu",
                      "dim_feedforward": 256, "dropout": 0.0, "pos_enc_at_attn": False, "d_model": 64,
                      "pos_enc_at_cross_attn_keys": True, "pos_enc_at_cross_attn_queries": False,
                      "self_attention": _rope(side), "cross_attention": _rope(side, rope_k_repeat=True, kv_in_dim=32)},
        },
        "memory_encoder": {
            "_target_": "sam2.modeling.memory_encoder.MemoryEncoder", "out_dim": 32, "in_dim": 64,
            "position_encoding": _sine(32),
            "mask_downsampler": {"_target_": "sam2.modeling.memory_encoder.MaskDownSampler", "kernel_size": 3,
                                 "stride": 2, "padding": 1, "embed_dim": 64},
            "fuser": {"_target_": "sam2.modeling.memory_encoder.Fuser", "num_layers": 2,
                      "layer": {"_target_": "sam2.modeling.memory_encoder.CXBlock", "dim": 64, "kernel_size": 7,
                                "padding": 3, "layer_scale_init_value": 1e-6, "use_dwconv": True}},
        },
        "num_maskmem": 7, "image_size": image_size, "sigmoid_scale_for_mem_enc": 20.0,
        "sigmoid_bias_for_mem_enc": -10.0, "use_mask_input_as_output_without_sam": True,
        "directly_add_no_mem_embed": True, "no_obj_embed_spatial": True, "use_high_res_features_in_sam": True,
        "multimask_output_in_sam": True, "iou_prediction_use_sigmoid": True, "use_obj_ptrs_in_encoder": True,
        "add_tpos_enc_to_obj_ptrs": True, "proj_tpos_enc_in_obj_ptrs": True, "use_signed_tpos_enc_to_obj_ptrs": True,
        "only_obj_ptrs_in_the_past_for_eval": True, "pred_obj_scores": True, "pred_obj_scores_mlp": True,
        "fixed_no_obj_ptr": True, "multimask_output_for_tracking": False, "use_multimask_token_for_obj_ptr": True,
        "multimask_min_pt_num": 0, "multimask_max_pt_num": 1, "use_mlp_for_obj_ptr_proj": True,
        "compile_image_encoder": False, "binarize_mask_from_pts_for_mem_enc": True,
    }


def build_small(config: dict, image_size: int) -> torch.nn.Module:
    """Instantiate `config` (as `small_config` writes it) at `image_size`, random weights."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = json.loads(json.dumps(config))
    side = image_size // 16
    config["image_size"] = image_size
    layer = config["memory_attention"]["layer"]
    for attention in ("self_attention", "cross_attention"):
        layer[attention]["feat_sizes"] = [side, side]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = instantiate(OmegaConf.create(config), _recursive_=True)
    return sam.eval()


def save_checkpoint(sam: torch.nn.Module, path: Path, config: dict, provenance: dict[str, str]) -> None:
    """fp16 weights plus the config and how they were made, written to a temp file then renamed."""
    tensors = {name: t.detach().to(torch.float16).contiguous().cpu() for name, t in sam.state_dict().items()}
    metadata = {"sam2pal_config": json.dumps(config), "trained_on": TRAINED_ON, **provenance}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def resolve(spec: str) -> Path:
    """`synthetic:256` -> tests/fixtures/sam2pal-synthetic-256.safetensors; `synthetic:PATH` a file."""
    name = spec.split(":", 1)[1] if ":" in spec else "256"
    name = name or "256"
    path = Path(name).expanduser()
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise SamPalError(f"--model {spec}: {path} not found; pass a file written by `sam2pal pretrain`")
        return path
    path = FIXTURES / f"sam2pal-synthetic-{name}.safetensors"
    if not path.is_file():
        found = sorted(p.name for p in FIXTURES.glob("sam2pal-synthetic-*.safetensors")) if FIXTURES.is_dir() else []
        raise SamPalError(f"--model {spec}: no {path.name} in {FIXTURES} (found: {', '.join(found) or 'none'}); "
                          "use synthetic:256 in a source checkout, or synthetic:PATH.safetensors")
    return path


def load_checkpoint(path: Path, image_size: int | None) -> tuple[torch.nn.Module, dict[str, str]]:
    """The model at `image_size` (default: the size it was trained at) and its metadata."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key).float() for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise SamPalError(f"cannot read {path}: {exc}".splitlines()[0]) from exc
    if "sam2pal_config" not in metadata:
        raise SamPalError(f"{path} has no sam2pal_config in its metadata; it was not written by `sam2pal pretrain`")
    config = json.loads(metadata["sam2pal_config"])
    sam = build_small(config, image_size or int(metadata.get("image_size", config["image_size"])))
    result = sam.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SamPalError(f"{path} does not fit its own config: e.g. {(result.missing_keys + result.unexpected_keys)[0]}")
    return sam, metadata
