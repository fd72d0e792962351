"""Process-group helpers: the same code runs alone or under torchrun (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment; a no-op for a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard_range(total: int, ctx: DistContext) -> tuple[int, int]:
    """Contiguous [start, end) slice of `total` items for this rank (shards differ by at most one item)."""
    per_rank, extra = divmod(total, ctx.world_size)
    start = ctx.rank * per_rank + min(ctx.rank, extra)
    return start, start + per_rank + (1 if ctx.rank < extra else 0)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's object, in rank order (just [obj] when running alone)."""
    if not ctx.enabled:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def parameter_checksums(module: torch.nn.Module, ctx: DistContext) -> list[float]:
    """One position-weighted checksum of the parameters per rank: DDP ranks must hold identical weights."""
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float64)
        offset = 1
        for param in module.parameters():
            flat = param.detach().double().flatten().cpu()
            total += (flat * torch.arange(offset, offset + flat.numel(), dtype=torch.float64)).sum()
            offset += flat.numel()
    return [float(v) for v in gather_objects(float(total), ctx)]
