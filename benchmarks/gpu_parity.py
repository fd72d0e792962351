"""Correctness of the GPU path: a few training steps on the device and on the CPU, from the same initial weights
and the same batches, must agree within bf16 tolerance.

The device runs the step in bf16 autocast with channels_last (the teacher's forward too), the CPU in fp32, so
they cannot agree exactly: what is compared is each step's loss (relative difference) and what the steps did to
the weights, ||Δ_device − Δ_cpu|| / ||Δ_cpu|| over every trained parameter (Δ = final − initial; comparing the
weights themselves would hide a wrong update behind the much larger initial values). Augmentation and mixing
are switched off for the check because their random draws come from per-device generators, which differ, and
the learning rate is small so that a few steps from a random start stay where rounding differences do not
compound (at the default 0.05 without warm-up the loss climbs and two fp32 runs a rounding apart part ways)."""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_cases import Bench, Case, teacher_on
from eikd_edge.distributed import DistContext, parameter_checksums
from eikd_edge.models.teacher import TeacherModel

CHECK_OVERRIDES = [
    "train.lr=0.005",
    "train.mix=none",
    "train.augment.crop=pad",
    "train.augment.crop_pad=0",
    "train.augment.flip=false",
    "train.augment.jitter=0",
]


@dataclass(frozen=True)
class Tolerance:
    """bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2% per operation). Emulated on a CPU (bf16
    autocast + channels_last against fp32, 3 steps at the check's batch, two seeds) the loss differed by up to
    1.3% (cifar32) and the weight update by up to 8.0% (imagenet224); the bounds leave headroom for the GPU's
    own kernels. A real fault (a wrong layout, a missed sync, a dropped gradient, a learning rate 1.5x off)
    moves the update by far more.
    """

    loss_rtol: float = 0.03
    update_rtol: float = 0.20


@dataclass
class StepRun:
    device: str
    losses: list[float]
    update: torch.Tensor  # every trained parameter's change, flattened, float64 on the CPU
    checksum: float


@dataclass
class Parity:
    reference: str
    device: str
    steps: int
    batch: int
    loss_rel_max: float
    update_rel: float
    checksum_rel: float
    tolerance: dict[str, float]
    passed: bool
    reasons: list[str] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _flat(parameters: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten().cpu() for p in parameters])


def run_steps(
    case: Case,
    teacher: TeacherModel,
    device: torch.device,
    steps: int,
    seed: int,
    overrides: list[str] | None = None,
    initial: dict[str, torch.Tensor] | None = None,
) -> tuple[StepRun, dict[str, torch.Tensor]]:
    """`steps` training steps of the package's Trainer on `device`; returns the run and the initial weights
    (pass them to the next run so both start from the same place)."""
    with tempfile.TemporaryDirectory() as folder:
        overrides = [*CHECK_OVERRIDES, *(overrides or [])]
        bench = Bench(case, teacher_on(teacher, device), device, seed, overrides, Path(folder), warmup_steps=0)
        net = bench.trainer.net
        if initial is not None:
            net.load_state_dict(initial)
        start_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        before = _flat(list(net.parameters()))
        losses = [bench.step()["total"] for _ in range(steps)]
        update = _flat(list(net.parameters())) - before
        checksum = parameter_checksums(net, DistContext())[0]
    return StepRun(str(device), losses, update, checksum), start_state


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def compare_runs(reference: StepRun, candidate: StepRun, tolerance: Tolerance, batch: int = 0) -> Parity:
    """Pass when every step's loss and the weight update agree within the tolerance; every reason is listed."""
    reasons = []
    if len(reference.losses) != len(candidate.losses) or reference.update.shape != candidate.update.shape:
        reasons.append("the runs differ in length or in the parameters they train")
        loss_rel = update_rel = math.inf
    else:
        finite = all(math.isfinite(v) for v in candidate.losses) and bool(torch.isfinite(candidate.update).all())
        if not finite:
            reasons.append(f"{candidate.device} produced a non-finite loss or weight")
        loss_rel = max((_relative(c, r) for c, r in zip(candidate.losses, reference.losses, strict=True)),
                       default=0.0)  # fmt: skip
        norm = float(reference.update.norm())
        gap = float((candidate.update - reference.update).norm())
        update_rel = gap / norm if norm > 0 else (0.0 if gap == 0 else math.inf)
        if not finite:
            loss_rel, update_rel = math.inf, math.inf
    if loss_rel > tolerance.loss_rtol and math.isfinite(loss_rel):
        reasons.append(f"loss differs by {loss_rel:.2%} (tolerance {tolerance.loss_rtol:.0%})")
    if update_rel > tolerance.update_rtol and math.isfinite(update_rel):
        reasons.append(f"weight update differs by {update_rel:.2%} (tolerance {tolerance.update_rtol:.0%})")
    return Parity(
        reference=reference.device,
        device=candidate.device,
        steps=len(candidate.losses),
        batch=batch,
        loss_rel_max=loss_rel,
        update_rel=update_rel,
        checksum_rel=_relative(candidate.checksum, reference.checksum),
        tolerance=asdict(tolerance),
        passed=not reasons,
        reasons=reasons,
    )


def check_case(
    case: Case, teacher: TeacherModel, device: torch.device, steps: int, seed: int, tolerance: Tolerance
) -> Parity:
    """The CPU reference first (its initial weights are then loaded into the device run)."""
    reference, initial = run_steps(case, teacher, torch.device("cpu"), steps, seed)
    candidate, _ = run_steps(case, teacher, device, steps, seed, initial=initial)
    result = compare_runs(reference, candidate, tolerance, case.batch)
    if device.type == "cpu":
        result.note = "device is the CPU: both runs take the same path (the check's code is exercised, not bf16)"
    return result
