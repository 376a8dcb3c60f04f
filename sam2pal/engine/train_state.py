"""The trainer's resume file, `trainer_state.pt`: one owner of that format.

Written after every finished epoch (temp file, then rename, so a crash keeps the last whole
epoch): the trainable tensors, optimizer, schedule, fp16 gradient scaler and the run's counters.
Read back only into a model it fits: a missing or unexpected trainable tensor is refused, as
loading an adapter refuses one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sam2pal.errors import SamPalError

STATE_NAME = "trainer_state.pt"


def save_state(folder: Path, sam: torch.nn.Module, optimizer, scheduler, scaler, counters: dict) -> None:
    state = {
        "weights": {n: p.detach().cpu() for n, p in sam.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        **counters,
    }
    tmp = folder / (STATE_NAME + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / STATE_NAME)


def load_state(folder: Path, sam: torch.nn.Module) -> dict:
    """Load the saved trainable tensors into `sam` (after checking they fit) and return the
    state, whose optimizer, scheduler, scaler and counters the trainer restores."""
    state_path = folder / STATE_NAME
    if not state_path.is_file():
        raise SamPalError(f"--resume {folder} has no {STATE_NAME}; only folders written by `sam2pal train` resume")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    trainable = [name for name, p in sam.named_parameters() if p.requires_grad]
    missing = [name for name in trainable if name not in state["weights"]]
    result = sam.load_state_dict(state["weights"], strict=False)
    if result.unexpected_keys or missing:
        example = (result.unexpected_keys + missing)[0]
        raise SamPalError(f"{state_path} does not fit this model ({len(result.unexpected_keys)} unexpected, "
                          f"{len(missing)} missing trainable tensors, e.g. {example}); start a new adapter")
    return state
