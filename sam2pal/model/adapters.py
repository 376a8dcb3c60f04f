"""What fine-tuning changes in SAM2, and how it is saved, refused and loaded.

Three modes: `lora` (peft LoRA on the attention projections of memory attention and the mask
decoder, optionally the image encoder), `decoder` (everything but the image encoder trains) and
`full`. Whatever the mode, an adapter folder holds the trained tensors in
`adapter_model.safetensors` and an `adapter_config.json` that names the base model it belongs to.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from sam2pal.errors import SamPalError
from sam2pal.io.files import atomic_write_bytes, atomic_write_json
from sam2pal.model.build import LoadedModel

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
MODES = ("lora", "decoder", "full")

_MEMORY_ATTENTION = r"memory_attention\.layers\.\d+\.(self_attn|cross_attn_image)\.(q|k|v|out)_proj"
_MASK_DECODER = r"sam_mask_decoder\.transformer\..*(q|k|v|out)_proj"
_IMAGE_ENCODER = r"image_encoder\.trunk\.blocks\.\d+\.attn\.(qkv|proj)"


@dataclass
class AdapterConfig:
    """How an adapter was made; saved next to its weights."""

    mode: str = "lora"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_encoder: bool = False
    base_model: str = ""
    base_variant: str = ""
    base_fingerprint: str = ""
    image_size: int = 1024
    structures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SamPalError(f"--mode {self.mode!r} is not known; use lora, decoder or full")
        if self.lora_rank < 1:
            raise SamPalError(f"--lora-rank {self.lora_rank} must be at least 1")

    @property
    def trains_encoder(self) -> bool:
        return self.mode == "full" or (self.mode == "lora" and self.lora_encoder)

    def lora_targets(self) -> str:
        parts = [_MEMORY_ATTENTION, _MASK_DECODER] + ([_IMAGE_ENCODER] if self.lora_encoder else [])
        return "|".join(f"({p})" for p in parts)


def prepare(loaded: LoadedModel, config: AdapterConfig) -> list[torch.nn.Parameter]:
    """Make the trainable part of `loaded.sam` trainable (adding LoRA layers if needed); return it."""
    sam = loaded.sam
    if config.mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=config.lora_targets())
        inject_adapter_in_model(lora, sam)
        for name, param in sam.named_parameters():
            param.requires_grad_("lora_" in name)
        sam.to(loaded.device)
    else:
        for name, param in sam.named_parameters():
            param.requires_grad_(config.mode == "full" or not name.startswith("image_encoder."))
    return [p for p in sam.parameters() if p.requires_grad]


def trainable_state(sam: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in sam.named_parameters() if p.requires_grad}


def save_adapter(sam: torch.nn.Module, config: AdapterConfig, out_dir: Path) -> None:
    """Write weights and config atomically, so a crash never leaves half an adapter."""
    data = save(trainable_state(sam), metadata={"format": "pt", "sam2pal_mode": config.mode})
    atomic_write_bytes(Path(out_dir) / WEIGHTS_NAME, data)
    atomic_write_json(Path(out_dir) / CONFIG_NAME, asdict(config))


def read_adapter_config(adapter_dir: Path) -> AdapterConfig:
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise SamPalError(f"no {CONFIG_NAME} in {adapter_dir}; pass a folder written by `sam2pal train`")
    try:
        data = json.loads(path.read_text())
        return AdapterConfig(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise SamPalError(f"{path} is not a sam2pal adapter config ({exc}); retrain or pass another --adapter") from exc


def check_base(loaded: LoadedModel, config: AdapterConfig, adapter_dir: Path) -> None:
    """Refuse an adapter trained on other weights: it would load and silently give nonsense."""
    if config.base_fingerprint != loaded.fingerprint:
        raise SamPalError(
            f"adapter {adapter_dir} was trained on {config.base_model} ({config.base_variant}), "
            f"not on --model {loaded.name} ({loaded.variant}); pass --model {config.base_model}"
        )


def load_weights(sam: torch.nn.Module, adapter_dir: str | Path) -> None:
    """Put an adapter's tensors into a model already prepared for it; every trainable tensor
    must be filled and every saved tensor must find its place (a prefix mismatch loads nothing)."""
    weights = Path(adapter_dir) / WEIGHTS_NAME
    try:
        state = load_file(weights)
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise SamPalError(f"cannot read {weights} ({exc}); retrain or pass another --adapter") from exc
    result = sam.load_state_dict(state, strict=False)
    unfilled = [n for n, p in sam.named_parameters() if p.requires_grad and n not in state]
    if result.unexpected_keys or unfilled:
        example = (result.unexpected_keys + unfilled)[0]
        raise SamPalError(
            f"{weights} does not fit this model ({len(result.unexpected_keys)} tensors without a place, "
            f"{len(unfilled)} trainable tensors missing, e.g. {example}); it was made for another model "
            "or sam2pal version"
        )


def load_adapter(loaded: LoadedModel, adapter_dir: str | Path) -> AdapterConfig:
    """Apply a saved adapter to `loaded.sam` in place, after checking it belongs to this base model."""
    adapter_dir = Path(adapter_dir)
    if loaded.adapter_dir is not None:
        raise SamPalError(f"the model already carries the adapter {loaded.adapter_dir}; load a fresh model for {adapter_dir}")
    config = read_adapter_config(adapter_dir)
    check_base(loaded, config, adapter_dir)
    prepare(loaded, config)
    load_weights(loaded.sam, adapter_dir)
    loaded.sam.requires_grad_(False)
    loaded.sam.eval()
    loaded.adapter_dir = adapter_dir
    return config
