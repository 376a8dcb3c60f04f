"""What a fine-tune is asked to do (TrainConfig) and which templates it may learn from.

Kept apart from the trainer so that the CLI, the web app's job specs and the benchmarks build a
configuration without importing the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sam2pal.engine.losses import LossWeights
from sam2pal.engine.palindrome import CYCLE_MEMORIES
from sam2pal.errors import SamPalError
from sam2pal.io.images import DEFAULT_MAX_PIXELS

DEFAULT_LR = {"lora": 2e-4, "decoder": 1e-5, "full": 5e-6}
@dataclass
class TrainConfig:
    epochs: int = 5
    steps_per_epoch: int | None = None  # default: one pass over the specimens
    mode: str = "lora"
    lr: float | None = None  # default depends on the mode
    lora_rank: int = 8
    lora_encoder: bool = False
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    cycle_memory: str = "tracked"
    augment: bool = True
    cache_bytes: int = 2 << 30  # image features kept in RAM
    cache_dir: Path | None = None  # where features that do not fit go, instead of being re-encoded
    structures_per_pass: int | None = None  # default: all on CUDA, a ~1 GB activation budget elsewhere
    low_memory: bool = False  # one structure per pass everywhere, freed memory returned at once
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger specimens are skipped with a warning
    folds: int = 5  # templates (labelled specimens, if any) dealt into this many folds...
    fold: int = 0  # ...and this one is held out for validation
    accumulate: int = 1  # micro-batches (template → specimen palindromes) per optimiser step, per rank
    init_adapter: Path | None = None  # start from this adapter (its mode and rank), e.g. a second round
    warmup_steps: int | None = None  # linear warm-up before the cosine decay; default 5% of the steps
    tensorboard: Path | None = None  # also write loss, learning rate and validation IoU there
    supervised_only: bool = False  # with labels: no palindrome steps on the unlabelled specimens
    loss: LossWeights = field(default_factory=LossWeights)  # of the supervised steps
    precision: str = "bf16"  # autocast on CUDA: bf16, or fp16 with a gradient scaler (GPUs without bf16)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise SamPalError(f"--folds {self.folds} must be at least 2 (one fold is held out)")
        if not 0 <= self.fold < self.folds:
            raise SamPalError(f"--fold {self.fold} must be between 0 and --folds - 1 ({self.folds - 1})")
        if self.epochs < 1:
            raise SamPalError(f"--epochs {self.epochs} must be at least 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise SamPalError(f"--steps-per-epoch {self.steps_per_epoch} must be at least 1")
        if self.cycle_memory not in CYCLE_MEMORIES:
            raise SamPalError(f"--cycle-memory {self.cycle_memory!r}: use one of {', '.join(CYCLE_MEMORIES)}")
        if self.lr is not None and not self.lr > 0:
            raise SamPalError(f"--lr {self.lr} must be positive")
        if self.cache_bytes < 0:
            raise SamPalError(f"--feature-cache-gb {self.cache_bytes / 2**30:g} cannot be negative")
        if self.structures_per_pass is not None and self.structures_per_pass < 1:
            raise SamPalError(f"--structures-per-pass {self.structures_per_pass} must be at least 1")
        if self.accumulate < 1:
            raise SamPalError(f"--accumulate {self.accumulate} must be at least 1")
        if self.precision not in ("bf16", "fp16"):
            raise SamPalError(f"--precision {self.precision!r}: use bf16 or fp16")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise SamPalError(f"--warmup-steps {self.warmup_steps} cannot be negative")



def split_templates(count: int, folds: int, fold: int, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) template indices: a seeded shuffle dealt into `folds` folds (fewer
    when there are fewer templates), fold `fold` held out. One template: nothing held out."""
    if count < 2:
        return list(range(count)), []
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    folds = min(folds, count)
    held = sorted(order[fold % folds :: folds])
    return [i for i in range(count) if i not in held], held
