"""Where student training runs: the device, and the processes torchrun started.

Several processes are torch's own engines, not a home-made one: `torchrun` starts them and sets
RANK / WORLD_SIZE / LOCAL_RANK, `torch.distributed` connects them (gloo on CPU, NCCL on GPUs), and
the student is wrapped in DistributedDataParallel or sharded with FSDP2 (`fully_shard`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

Parallel = Literal["ddp", "fsdp"]
Precision = Literal["fp32", "bf16"]
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def resolve_device(setting: str, local_rank: int = 0) -> torch.device:
    """`student.device`: auto (a GPU when there is one), cpu, cuda (this process's GPU) or cuda:N."""
    if not re.match(DEVICE_PATTERN, setting):
        raise PipelineError(f"student.device '{setting}' is not one of auto, cpu, cuda, cuda:N")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PipelineError(f"student.device {setting}: no CUDA device is available here (use auto or cpu)")
    index = int(setting.split(":")[1]) if ":" in setting else local_rank
    if index >= torch.cuda.device_count():
        raise PipelineError(f"student.device {setting}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def autocast(device: torch.device, precision: Precision) -> AbstractContextManager:
    """bf16 mixed precision: matmuls in bfloat16, master weights and optimizer state in float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one, or those torchrun started)."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over all processes (float64, so counts stay exact)."""
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def wrap(self, module: torch.nn.Module, parallel: Parallel, layers: Sequence[torch.nn.Module]) -> torch.nn.Module:
        """DDP (a full copy per process, gradients averaged) or FSDP2 (each of `layers`, then the rest, sharded)."""
        if self.world == 1:
            return module
        if parallel == "ddp":
            return DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None, broadcast_buffers=False)
        for layer in layers:
            fully_shard(layer)
        fully_shard(module)
        return module

    def gradient_sync(self, model: torch.nn.Module, sync: bool) -> AbstractContextManager:
        """Skip the gradient all-reduce on micro-batches before the last one of an accumulated step."""
        if isinstance(model, DistributedDataParallel) and not sync:
            return model.no_sync()
        if isinstance(model, FSDPModule):
            model.set_requires_gradient_sync(sync)
        return nullcontext()


@contextmanager
def training_processes(device: str) -> Iterator[Processes]:
    """The processes of this run: a process group when torchrun started several (and none is open yet)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and ":" in device:
        raise PipelineError(f"student.device {device} names one GPU, but {world} processes were started: use cuda (each process takes the GPU of its local rank) or auto")
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    opened = world > 1 and not dist.is_initialized()
    if opened:
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        log.info("process %d of %d on %s", rank, world, resolved)
    try:
        yield Processes(rank, world, resolved)
    finally:
        if opened:
            dist.destroy_process_group()
