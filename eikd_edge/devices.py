"""Device names from recipes and command lines (auto, cpu, cuda, cuda:N, mps) as torch devices, read one way by
every command, so `auto` lands select, distill, synthesize and bench on the same device."""

from __future__ import annotations

import torch

from eikd_edge.errors import EikdError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: this rank's GPU when CUDA is visible, else the CPU. A CUDA device named where none is visible is
    refused here, before any work starts, instead of failing mid-run."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EikdError("train.device is cuda but no CUDA device is visible; use train.device=cpu or auto")
    return device
