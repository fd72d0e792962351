"""Student zoo: torchvision classifiers, small CIFAR-style ResNets and (with the timm extra) `timm:NAME`, by name."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from eikd_edge.errors import EikdError
from eikd_edge.models import timm_zoo
from eikd_edge.models.cifar import cifar_imagenet_resnet, cifar_resnet

RECOMMENDED_STUDENTS = (
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "resnet18",
    "resnet34",
    "efficientnet_b0",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
)

_CIFAR_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    **{f"cifar_resnet{d}": partial(cifar_resnet, d) for d in (8, 14, 20, 32, 44, 56)},
    "cifar_resnet18": partial(cifar_imagenet_resnet, [2, 2, 2, 2]),
    "cifar_resnet34": partial(cifar_imagenet_resnet, [3, 4, 6, 3]),
}
_WIDTH_KWARG = {"mobilenet_v3_small": "width_mult", "mobilenet_v3_large": "width_mult"}


@dataclass(frozen=True)
class ArchInfo:
    name: str
    family: str  # "cifar" (low resolution), "torchvision" or "timm"


def torchvision_classifiers() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


SOURCES = ("builtin", "timm", "all")


def list_architectures(all_torchvision: bool = False, source: str = "builtin") -> list[ArchInfo]:
    """builtin: CIFAR ResNets and torchvision (recommended, or every one); timm: the curated edge students."""
    if source not in SOURCES:
        raise EikdError(f"unknown model source {source!r}; use one of {', '.join(SOURCES)}")
    infos: list[ArchInfo] = []
    if source in ("builtin", "all"):
        names = torchvision_classifiers() if all_torchvision else list(RECOMMENDED_STUDENTS)
        infos += [ArchInfo(n, "cifar") for n in _CIFAR_BUILDERS] + [ArchInfo(n, "torchvision") for n in names]
    if source in ("timm", "all"):
        infos += [ArchInfo(n, "timm") for n in timm_zoo.curated_students()]
    return infos


def build_model(arch: str, num_classes: int, width: float = 1.0) -> nn.Module:
    """A freshly initialised classifier (no downloaded weights: nothing is fetched at run time)."""
    if timm_zoo.is_timm(arch):
        return timm_zoo.build_timm(arch, num_classes, width)
    if arch in _CIFAR_BUILDERS:
        try:
            return _CIFAR_BUILDERS[arch](num_classes=num_classes, width=width)
        except ValueError as exc:
            raise EikdError(f"{arch}: {exc}") from None
    if arch not in torchvision_classifiers():
        close = difflib.get_close_matches(arch, [*_CIFAR_BUILDERS, *torchvision_classifiers()], n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise EikdError(
            f"unknown architecture {arch!r}{hint}; `eikd-edge models --all` lists them; timm:NAME names a timm model"
        )
    kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    if width != 1.0:
        if arch not in _WIDTH_KWARG:
            raise EikdError(f"{arch} has no width option; width works for {sorted(_WIDTH_KWARG)} and cifar_resnetN")
        kwargs[_WIDTH_KWARG[arch]] = width
    return torchvision.models.get_model(arch, **kwargs)


def export_status(arch: str) -> str:
    """What `models` says of exporting this architecture: "ok" for the ones the export tests cover, the measured
    reason for a known failure, "not tested" for the rest of torchvision (`--all`)."""
    issue = timm_zoo.export_issue(arch)
    if issue:
        return issue
    tested = {*_CIFAR_BUILDERS, *RECOMMENDED_STUDENTS, *timm_zoo.curated_students()}
    return "ok" if arch in tested else "not tested"


def for_export(model: nn.Module, arch: str) -> nn.Module:
    """The model an edge runtime should get: timm's re-parameterisable models fused, every other model as is."""
    return timm_zoo.fuse_for_inference(model) if timm_zoo.is_timm(arch) else model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


LARGE_STUDENT = 0.8  # share of the teacher's parameters from which a student saves too little to be worth it


def size_warning(arch: str, student_params: int, teacher_params: int) -> str | None:
    """A warning when the student is nearly as large as its teacher: distilling then buys accuracy loss, not speed."""
    if teacher_params <= 0 or student_params < LARGE_STUDENT * teacher_params:
        return None
    return (
        f"the student {arch} has {student_params / 1e6:.2f}M parameters, {student_params / teacher_params:.2f}x its "
        f"teacher's {teacher_params / 1e6:.2f}M: it will not run much faster than the teacher; pick a smaller "
        "--student (`eikd-edge models`)"
    )


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Multiply-accumulates of one forward at batch 1, from torch's own FLOP counter (FLOPs / 2)."""
    was_training = model.training
    _set_mode(model, False)
    example = torch.zeros(1, 3, *input_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(example)
    _set_mode(model, was_training)
    return counter.get_total_flops() // 2


def _set_mode(model: nn.Module, training: bool) -> None:
    with contextlib.suppress(NotImplementedError):  # torch.export modules have a fixed mode
        model.train(training)
