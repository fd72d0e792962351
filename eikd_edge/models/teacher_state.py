"""A teacher given as a state_dict (or a training checkpoint holding one), apart from the other formats
(teacher.py): loaded into the named architecture, its class count read from the last weight matrix, and a class
count that differs from the spec's said with both numbers instead of a bare shape mismatch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from eikd_edge.errors import EikdError
from eikd_edge.models.zoo import build_model


def module_from_state(obj: Any, path: Path, arch: str | None, num_classes: int | None) -> tuple[nn.Module, str]:
    """The module a state_dict (or a checkpoint holding one) describes, and which of the two the file was."""
    if not isinstance(obj, dict):
        raise EikdError(f"{path.name} holds a {type(obj).__name__}, not a model or a state_dict")
    fmt = "state_dict"
    state = obj
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        fmt, state = "checkpoint", obj["state_dict"]
        arch = arch or obj.get("arch")
    elif "model" in obj and isinstance(obj["model"], dict):
        fmt, state = "checkpoint", obj["model"]
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EikdError(f"{path.name} is a dict but not a state_dict of tensors")
    if arch is None:
        raise EikdError(
            f"{path.name} is a state_dict; name its architecture with --teacher-arch (see `eikd-edge models`)"
        )
    classes = num_classes or _infer_num_classes(state)
    kwargs = obj.get("arch_kwargs", {}) if fmt == "checkpoint" else {}
    try:
        return load_into_arch(state, arch, classes, kwargs, path), fmt
    except EikdError:
        _refuse_other_class_count(state, arch, classes, kwargs, path)
        raise


def _refuse_other_class_count(
    state: dict[str, torch.Tensor], arch: str, named: int, kwargs: dict[str, Any], path: Path
) -> None:
    """A state_dict that loads with its own class count but not with the spec's: say so with both counts, the
    same way as for other teacher formats, instead of a bare shape mismatch."""
    try:
        own = _infer_num_classes(state)
        if own != named:
            load_into_arch(state, arch, own, kwargs, path)
    except EikdError:
        return
    if own != named:
        raise EikdError(
            f"teacher {path.name} outputs {own} classes but its spec names {named}; "
            "fix the class list in the sidecar (or --classes)"
        )


def load_into_arch(
    state: dict[str, torch.Tensor], arch: str, num_classes: int, kwargs: dict[str, Any], path: Path
) -> nn.Module:
    module = build_model(arch, num_classes, **kwargs)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), "shape mismatch")
        raise EikdError(f"{path.name} does not fit --teacher-arch {arch}: {detail[:160]}") from None
    if missing or unexpected:
        raise EikdError(
            f"{path.name} does not fit --teacher-arch {arch}: {len(missing)} missing and {len(unexpected)} "
            f"unexpected keys (e.g. {(missing or unexpected)[0]}); check the architecture name and class count"
        )
    return module.eval()


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int:
    matrices = [t for k, t in state.items() if k.endswith("weight") and t.dim() == 2]
    if not matrices:
        raise EikdError("cannot tell the number of classes from the state_dict; give the classes in a sidecar")
    return int(matrices[-1].shape[0])
