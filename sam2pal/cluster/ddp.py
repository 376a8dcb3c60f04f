"""`sam2pal train` on several processes (GPUs): torchrun starts them, this module joins them.

Each rank runs its own micro-batches of every optimiser step (its own specimens, templates and
feature cache); after the backward passes the trainable gradients are summed across ranks
(losses are already divided by the global number of micro-batches), so every rank takes the same
step. That is data parallelism as DistributedDataParallel does it, done on the gradients
directly: SAM2's tracking calls the model's submodules, never one forward() a DDP wrapper could
hook. Rank 0 alone validates, logs and writes the adapter and the resume state.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sam2pal.errors import SamPalError

_LOST = ("another rank stopped in the middle of a step ({error}); the last finished epoch is saved: "
         "run the same command with --resume OUT to continue")


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ranks; a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> "Distributed":
        """Join the process group torchrun described in the environment (WORLD_SIZE, RANK…)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def slots(self, per_rank: int) -> range:
        """Which micro-batches of a step (0 … world·per_rank − 1) this rank runs."""
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Every rank's gradients summed, in one flat all-reduce. A parameter no rank gave a
        gradient keeps none, as in one process (AdamW then leaves it alone)."""
        if self.world == 1:
            return
        had = [param.grad is not None for param in params]
        flat = torch.cat([param.grad.reshape(-1) if param.grad is not None else torch.zeros(param.numel(),
                          dtype=param.dtype, device=param.device) for param in params]
                         + [torch.tensor(had, dtype=params[0].dtype, device=params[0].device)])
        self._all_reduce(flat)
        offset = 0
        anyone = flat[-len(params):] > 0
        for param, used in zip(params, anyone.tolist()):
            values = flat[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
            param.grad = values.clone() if used else None

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Numbers summed over the ranks (the step's loss and how many micro-batches ran)."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        self._all_reduce(tensor)
        return tensor.tolist()

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        except (RuntimeError, dist.DistError) as error:
            raise SamPalError(f"rank {self.rank}: " + _LOST.format(error=" ".join(str(error).split())[:200])) from error

    def finish(self) -> None:
        """Wait for every rank (rank 0 may still be validating), then leave the group."""
        if self.world > 1 and dist.is_initialized():
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()


def rank_device(device: str) -> str:
    """Under torchrun each rank takes its own GPU (LOCAL_RANK); elsewhere the device as given."""
    local = os.environ.get("LOCAL_RANK")
    if local is None or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return device
    if device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(int(local))
        return f"cuda:{local}"
    return device


def launch(nproc: int, argv: list[str]) -> int:
    """`sam2pal train --nproc N …`: run the same command under torchrun on N local processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "sam2pal.cli", *argv]
    result = subprocess.run(command)
    if result.returncode != 0:
        print(f"error: a training rank ended with exit status {result.returncode} and torchrun stopped the others; "
              "the last finished epoch is saved: run the same command with --resume OUT to continue",
              file=sys.stderr)
    return result.returncode


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
