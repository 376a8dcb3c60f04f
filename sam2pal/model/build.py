"""Build a SAM2 model from a name, a Hugging Face repo id, a local checkpoint or random weights.

Every route ends in Meta's `build_sam2` with the same overrides, so a model behaves the same
whatever its weights came from. The config is inferred from the checkpoint's shapes, which lets a
bare state dict or a renamed file load without the user naming a YAML file.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from sam2pal.errors import SamPalError

DEFAULT_MODEL = "facebook/sam2.1-hiera-tiny"

# variant -> (config file inside the sam2 package, checkpoint file name on the Hub)
_VARIANTS: dict[str, tuple[str, str]] = {
    "sam2.1-tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "sam2.1-small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "sam2.1-base-plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "sam2.1-large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
    "sam2-tiny": ("configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt"),
    "sam2-small": ("configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt"),
    "sam2-base-plus": ("configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt"),
    "sam2-large": ("configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt"),
}
_SIZES = ("tiny", "small", "base-plus", "large")
# Hiera trunk (embed dim, number of blocks) -> size
_TRUNK_SHAPES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base-plus", (144, 48): "large"}


@dataclass
class LoadedModel:
    """A ready SAM2 model plus what outputs and adapters must record about it."""

    sam: torch.nn.Module
    name: str
    variant: str
    image_size: int
    device: torch.device
    untrained: bool
    checkpoint_sha256: str | None
    fingerprint: str
    adapter_dir: Path | None = None  # set once an adapter is trained into or loaded onto `sam`
    trained_on: str | None = None  # e.g. "trained on synthetic specimens only"; None: Meta's weights
    mixed_precision: torch.dtype | None = None  # None: bf16 on CUDA; set to run CUDA's dtypes elsewhere

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 on CUDA, full precision elsewhere (CPU bf16 is slower and less exact); tests set
        `mixed_precision` to run the CUDA path's dtypes on a CPU."""
        if self.mixed_precision is not None:
            return self.mixed_precision
        return torch.bfloat16 if self.device.type == "cuda" else None

    def autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def config_file(variant: str) -> str:
    """The sam2 package's config for a variant, e.g. configs/sam2.1/sam2.1_hiera_t.yaml."""
    return _VARIANTS[variant][0]


def pick_device(device: str = "auto") -> torch.device:
    """`auto` prefers CUDA, then Apple MPS, then CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise SamPalError(f"--device {device!r} is not known; use auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SamPalError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise SamPalError("--device mps was asked for but MPS is not available; use --device cpu")
    return torch.device(device)


def check_image_size(image_size: int) -> int:
    if image_size < 64 or image_size % 32:
        raise SamPalError(
            f"--image-size {image_size} must be a multiple of 32 and at least 64 "
            f"(SAM2's feature maps need it); try {max(64, round(image_size / 32) * 32)}"
        )
    return image_size


def _variant_from_name(name: str) -> str | None:
    """`tiny` -> sam2.1-tiny, `sam2-small` -> sam2-small, `facebook/sam2.1-hiera-tiny` -> sam2.1-tiny."""
    if name in _SIZES:
        return f"sam2.1-{name}"
    if name in _VARIANTS:
        return name
    for variant in _VARIANTS:
        family, size = variant.split("-", 1)
        if name == f"facebook/{family}-hiera-{size}":
            return variant
    return None


def variant_from_state_dict(state_dict: dict[str, torch.Tensor], source: str) -> str:
    """Infer tiny/small/base-plus/large and SAM2 vs SAM2.1 from parameter shapes."""
    key = "image_encoder.trunk.patch_embed.proj.weight"
    if key not in state_dict:
        raise SamPalError(f"{source} is not a SAM2 checkpoint (no {key}); pass a SAM2 or SAM2.1 .pt file")
    embed_dim = state_dict[key].shape[0]
    blocks = {k.split(".")[3] for k in state_dict if k.startswith("image_encoder.trunk.blocks.")}
    size = _TRUNK_SHAPES.get((embed_dim, len(blocks)))
    if size is None:
        raise SamPalError(
            f"{source}: a Hiera trunk with embed dim {embed_dim} and {len(blocks)} blocks is not a "
            "known SAM2 size (tiny, small, base-plus, large)"
        )
    family = "sam2.1" if "no_obj_embed_spatial" in state_dict else "sam2"
    return f"{family}-{size}"


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Meta's `{"model": state_dict}` or a bare state dict, loaded without unpickling code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise SamPalError(f"cannot read checkpoint {path}: {exc}".splitlines()[0]) from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SamPalError(f"{path} holds no state dict; save one with torch.save({{'model': model.state_dict()}}, path)")
    return obj


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hub_error(repo_id: str, filename: str, exc: Exception) -> SamPalError:
    return SamPalError(
        f"could not get {filename} from the Hugging Face Hub repo {repo_id} and it is not cached "
        f"({type(exc).__name__}); with no network, download the checkpoint elsewhere and pass "
        "--model PATH"
    )


def _download(repo_id: str, filename: str | None) -> Path:
    """A checkpoint from the Hub (or its cache); an unknown repo must hold exactly one .pt file
    unless `repo:filename` names it."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    failures = (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError)
    if filename is None:
        try:
            candidates = [f for f in huggingface_hub.list_repo_files(repo_id) if f.endswith(".pt")]
        except failures as exc:
            raise _hub_error(repo_id, "the checkpoint list", exc) from exc
        if len(candidates) != 1:
            raise SamPalError(
                f"--model {repo_id}: expected one .pt checkpoint in the repo, found {candidates or 'none'}; "
                f"name it as --model {repo_id}:FILE.pt"
            )
        filename = candidates[0]
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename))
    except failures as exc:
        raise _hub_error(repo_id, filename, exc) from exc


def fingerprint(sam: torch.nn.Module) -> str:
    """A short hash of the weights, so an adapter can refuse a base model it was not trained on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(sam.state_dict().items()):
        if "lora_" in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _overrides(image_size: int) -> list[str]:
    side = image_size // 16
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{side},{side}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{side},{side}]",
        # the template memory is encoded from a binary mask, as SAM2's video predictor does it
        "++model.binarize_mask_from_pts_for_mem_enc=true",
    ]


def build_model(variant: str, image_size: int, state_dict: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """Instantiate Meta's SAM2Base for `variant` at `image_size`; random init if no state dict."""
    from sam2.build_sam import build_sam2

    config = config_file(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random:* must be the same model in every process
        sam = build_sam2(config, None, device="cpu", mode="eval", hydra_overrides_extra=_overrides(image_size))
    if state_dict is not None:
        result = sam.load_state_dict(state_dict, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise SamPalError(
                f"checkpoint does not fit {variant}: {len(result.missing_keys)} missing and "
                f"{len(result.unexpected_keys)} unexpected keys (e.g. "
                f"{(result.missing_keys + result.unexpected_keys)[0]}); pass the matching --model"
            )
    return sam


def _load_synthetic(model: str, image_size: int | None, device: torch.device) -> LoadedModel:
    from sam2pal.model import synthetic

    checkpoint = synthetic.resolve(model)
    sam, metadata = synthetic.load_checkpoint(checkpoint, image_size)
    sam = sam.to(device)
    return LoadedModel(sam=sam, name=model, variant=synthetic.VARIANT, image_size=sam.image_size, device=device,
                       untrained=False, checkpoint_sha256=file_sha256(checkpoint), fingerprint=fingerprint(sam),
                       trained_on=metadata.get("trained_on", synthetic.TRAINED_ON))


def load_model(model: str = DEFAULT_MODEL, image_size: int | None = None, device: str = "auto") -> LoadedModel:
    """Resolve `model` (size name, Hub repo id, checkpoint path, `random:SIZE` or
    `synthetic:NAME`) and build it at `image_size` (default: 1024, or the size a synthetic model
    was trained at)."""
    if image_size is not None:
        check_image_size(image_size)
    torch_device = pick_device(device)
    if model == "synthetic" or model.startswith("synthetic:"):
        return _load_synthetic(model, image_size, torch_device)
    image_size = image_size or 1024
    checkpoint: Path | None = None
    untrained = False
    if model.startswith("random:"):
        variant = _variant_from_name(model.split(":", 1)[1])
        if variant is None:
            raise SamPalError(f"--model {model}: use random:tiny, random:small, random:base-plus or random:large")
        state_dict, untrained = None, True
    elif Path(model).expanduser().exists():
        checkpoint = Path(model).expanduser()
        if checkpoint.is_dir():
            raise SamPalError(f"--model {model} is a folder; pass the checkpoint file inside it (.pt)")
        state_dict = _read_checkpoint(checkpoint)
        variant = variant_from_state_dict(state_dict, str(checkpoint))
    elif Path(model).suffix in (".pt", ".pth", ".ckpt"):
        raise SamPalError(f"checkpoint not found: {model}; check the --model path")
    elif (variant := _variant_from_name(model)) is not None:
        family, size = variant.split("-", 1)
        checkpoint = _download(f"facebook/{family}-hiera-{size}", _VARIANTS[variant][1])
        state_dict = _read_checkpoint(checkpoint)
    elif model.count("/") == 1 and not model.startswith((".", "/", "~")):
        repo_id, _, filename = model.partition(":")
        checkpoint = _download(repo_id, filename or None)
        state_dict = _read_checkpoint(checkpoint)
        variant = variant_from_state_dict(state_dict, model)
    else:
        raise SamPalError(
            f"--model {model} is neither a file nor a known model; use tiny, small, base-plus, large, "
            "sam2-tiny…, a Hugging Face repo id (OWNER/NAME or OWNER/NAME:FILE.pt), a checkpoint path "
            "random:tiny or synthetic:256"
        )
    sam = build_model(variant, image_size, state_dict).to(torch_device)
    return LoadedModel(
        sam=sam,
        name=model,
        variant=variant,
        image_size=image_size,
        device=torch_device,
        untrained=untrained,
        checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None,
        fingerprint=fingerprint(sam),
    )


def compile_model(loaded: LoadedModel) -> None:
    """Opt-in `torch.compile` of the image encoder, the one part whose shapes never change within
    a run (memory attention and the decoder see a different number of objects per batch).

    The first batch pays the compilation (tens of seconds); a smaller last batch compiles once
    more. Whether it pays depends on the machine: measure with `sam2pal bench --compile`.
    """
    encoder = loaded.sam.image_encoder
    encoder.forward = torch.compile(encoder.forward, dynamic=False)


def describe(loaded: LoadedModel) -> str:
    """One line for the console and logs; random weights are never mistaken for a real model."""
    if loaded.untrained:
        label = "UNTRAINED random weights, for tests and benchmarks only"
    else:
        label = loaded.trained_on or "pretrained"
    return f"{loaded.variant} ({loaded.name}, {label}) at {loaded.image_size}px on {loaded.device}"
