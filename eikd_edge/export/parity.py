"""Parity: an artifact's top-1 agreement with the FP32 PyTorch student (and the teacher) on the same field images.

Export grades each artifact it builds with it, and validate re-grades every artifact in export.json; both compare
against the one Reference computed here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eikd_edge.checkpoint import StudentCheckpoint
from eikd_edge.data import load_labeled_folder
from eikd_edge.errors import EikdError
from eikd_edge.export.agreement import wilson_interval
from eikd_edge.export.fieldset import FieldImages
from eikd_edge.run import RunPaths, TeacherChanged, load_run_teacher
from eikd_edge.runtime import TorchPredictor

DEFAULT_GATE = 0.99
MAX_IMAGES = 2000


@dataclass(frozen=True)
class Parity:
    agree_student: float
    agree_teacher: float | None
    flip_rate: float
    max_abs_dprob: float
    max_abs_dlogit: float
    n_images: int
    gate: float
    passed: bool
    top1: float | None = None  # on --val labels, when given
    non_finite: int = 0  # images where this artifact or the student returned NaN or Inf
    agree_ci95: tuple[float, float] | None = None  # Wilson interval of agree_student over n_images

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not (k == "top1" and v is None)}


@dataclass(frozen=True)
class Reference:
    """What every artifact is compared with: the student's and the teacher's logits on the same images."""

    images: FieldImages
    student: np.ndarray
    teacher: np.ndarray | None
    val: tuple[torch.Tensor, np.ndarray] | None = None  # labeled images and labels
    teacher_top1: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def student_agree_teacher(self) -> float | None:
        if self.teacher is None:
            return None
        same = (self.student.argmax(1) == self.teacher.argmax(1)) & np.isfinite(self.student).all(1)
        return float(same.mean())


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def parity(logits: np.ndarray, ref: Reference, gate: float, top1: float | None = None) -> Parity:
    """Top-1 agreement with the student; a row where either side is NaN or Inf never agrees (the argmax of a NaN
    row is an arbitrary index, the same on both sides), so an artifact or student with such outputs fails."""
    finite = np.isfinite(logits).all(1) & np.isfinite(ref.student).all(1)
    top = logits.argmax(1)
    same = (top == ref.student.argmax(1)) & finite
    agree = float(same.mean())
    teacher = None
    if ref.teacher is not None:
        teacher = float(((top == ref.teacher.argmax(1)) & np.isfinite(logits).all(1)).mean())
    return Parity(
        agree_student=agree,
        agree_teacher=teacher,
        flip_rate=1.0 - agree,
        max_abs_dprob=_max_abs(softmax(logits) - softmax(ref.student)),
        max_abs_dlogit=_max_abs(logits - ref.student),
        n_images=len(top),
        gate=gate,
        passed=agree >= gate,
        top1=top1,
        non_finite=int((~finite).sum()),
        agree_ci95=tuple(round(b, 6) for b in wilson_interval(int(same.sum()), len(top))),  # type: ignore[arg-type]
    )


def _max_abs(diff: np.ndarray) -> float:
    """Largest absolute difference; infinite when any difference is not a number (written as null in JSON)."""
    with np.errstate(invalid="ignore"):
        return float(np.abs(diff).max()) if np.isfinite(diff).all() else float("inf")


def gate_reason(result: Parity) -> str | None:
    """Why an artifact failed its gate, or None when it passed."""
    if result.passed:
        return None
    why = f"top-1 agreement {result.agree_student:.4f} < gate {result.gate} on {result.n_images} images"
    if result.agree_ci95 is not None:
        why += f" (95% CI {result.agree_ci95[0]:.4f}-{result.agree_ci95[1]:.4f})"
    if result.non_finite:
        why += f" ({result.non_finite} of {result.n_images} outputs are NaN or Inf)"
    return why


def top1(predictor: Any, ref: Reference) -> float | None:
    if ref.val is None:
        return None
    images, labels = ref.val
    return float((predictor.predict_logits(images).argmax(1) == labels).mean())


def reference_outputs(
    run: RunPaths,
    ckpt: StudentCheckpoint,
    images: FieldImages,
    val_dir: Path | None = None,
    trust_pickle: bool = False,
) -> Reference:
    """Student logits, teacher logits (None with a note when the teacher cannot be loaded) and optional labels."""
    notes: list[str] = []
    teacher = None
    try:
        teacher = load_run_teacher(run, trust_pickle)
    except TeacherChanged:
        raise  # another file than the one distilled from: refuse rather than compare against it
    except EikdError as exc:
        notes.append(f"teacher not available, teacher agreement skipped: {exc}")
    if teacher is not None and tuple(teacher.spec.classes) != tuple(ckpt.spec.classes):
        notes.append("the teacher's classes differ from the student's: teacher agreement skipped")
        teacher = None
    val = None
    if val_dir is not None:
        val_images, labels, _ = load_labeled_folder(val_dir, ckpt.spec)
        val = (val_images, labels.numpy())
    teacher_logits = teacher.logits_of_images(images.images).numpy() if teacher is not None else None
    teacher_top1 = None
    if teacher is not None and val is not None:
        teacher_top1 = float((teacher.logits_of_images(val[0]).numpy().argmax(1) == val[1]).mean())
    student = TorchPredictor(ckpt.model, ckpt.spec).predict_logits(images.images)
    return Reference(images, student, teacher_logits, val, teacher_top1, notes)
