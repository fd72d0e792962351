"""Evaluating the student between training rounds, apart from the loop: its predictions on a set of images, its
top-1 against the teacher's labels (agreement) or the validation labels, and how the label-free pick of the
epoch to keep scores a round."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from eikd_edge.data import normalize
from eikd_edge.disk_images import ImageRows
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import TeacherModel


@dataclass(frozen=True)
class Checks:
    """The images each epoch is checked on, never trained on: the fixed agreement slice of the whole pool (the
    label-free criterion) and the selection's own held-out share (a diagnostic only: it flatters selective
    methods, whose held-out images are the ones the teacher is surest of)."""

    hold_images: ImageRows
    hold_idx: np.ndarray
    agree_images: ImageRows
    agree_idx: np.ndarray


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: ImageRows, spec: InputSpec, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = normalize(images[start : start + batch_size].to(device), spec)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs.append(model(batch).float().cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits.argmax(1) == targets).float().mean()) if len(targets) else float("nan")


def agreement(
    model: nn.Module, images: ImageRows, targets: torch.Tensor | None, spec: InputSpec, device: torch.device
) -> float:
    """The model's top-1 against `targets` (the teacher's labels); NaN where there are no images to check."""
    if targets is None:
        return float("nan")
    return top1(predict_logits(model, images, spec, device), targets)


def slice_agreement(
    model: nn.Module, images: ImageRows, targets: torch.Tensor | None, spec: InputSpec, device: torch.device
) -> dict[str, float]:
    """Agreement on the fixed slice, whole and per half: the epoch is picked on one half and reported on the
    other, so the reported share is not the best of many noisy looks at the same images (the pick's
    winner's curse read 85% where the last epochs measured 75-78% on a 224-px run)."""
    if targets is None:
        return {"agreement": float("nan"), "agreement_pick": float("nan"), "agreement_report": float("nan")}
    hits = predict_logits(model, images, spec, device).argmax(1) == targets
    pick, report = pick_and_report_halves(len(hits))
    return {
        "agreement": hits.float().mean().item(),
        "agreement_pick": hits[pick].float().mean().item() if len(pick) else float("nan"),
        "agreement_report": hits[report].float().mean().item() if len(report) else float("nan"),
    }


def pick_score(record: dict[str, Any], on_slice: bool, epoch: int) -> float:
    """What the label-free pick maximises: agreement on the slice's picking half (the selection's holdout when
    there is no slice); without either, the epoch number, so the last epoch is kept."""
    agreement = record["agreement_pick"] if on_slice else record["holdout_agreement"]
    return agreement if not math.isnan(agreement) else float(epoch)


def pick_and_report_halves(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the slice that pick the epoch (even) and that report its agreement (odd). A slice of one
    image cannot be split: it both picks and reports."""
    positions = torch.arange(size)
    if size < 2:
        return positions, positions
    return positions[0::2], positions[1::2]


class TeacherLogits(nn.Module):
    """Adapter so the teacher's widened output can be evaluated like any classifier."""

    def __init__(self, teacher: TeacherModel) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.predict(x)[0]

    def train(self, mode: bool = True) -> TeacherLogits:  # the teacher never trains
        return self
