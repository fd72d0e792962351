"""Classification-aware parity: every exported artifact vs the FP32 PyTorch student and the teacher, on field images.

The gate is label-free (top-1 agreement with the student), because field images have no labels; `--val` adds true
top-1 when a labeled folder exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eikd_edge.atomic import write_json_atomic
from eikd_edge.checkpoint import StudentCheckpoint, load_student
from eikd_edge.data import load_labeled_folder, normalize
from eikd_edge.errors import EikdError
from eikd_edge.export.agreement import wilson_interval
from eikd_edge.export.fieldset import FieldImages, folder_images, run_field_images
from eikd_edge.export.formats import FORMATS, get_format
from eikd_edge.export.record import merge_record, read_record, status_for
from eikd_edge.export.tensorrt import unavailable_reason
from eikd_edge.export.trt_checks import engine_failure_status
from eikd_edge.run import RunPaths, TeacherChanged, load_run_teacher
from eikd_edge.runfolder import writing_run
from eikd_edge.runtime import TorchPredictor, make_predictor

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


@dataclass(frozen=True)
class ArtifactCheck:
    name: str
    precision: str
    backend: str
    status: str  # ok | failed_gate | failed | skipped
    reason: str | None
    parity: Parity | None


@dataclass(frozen=True)
class ValidationResult:
    checks: list[ArtifactCheck]
    reference: Reference
    gate: float
    summary: dict[str, Any]
    path: Path

    @property
    def failed(self) -> list[ArtifactCheck]:
        return [c for c in self.checks if c.status in ("failed_gate", "failed")]


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
    teacher_logits = _teacher_logits(teacher, images.images) if teacher is not None else None
    teacher_top1 = None
    if teacher is not None and val is not None:
        teacher_top1 = float((_teacher_logits(teacher, val[0]).argmax(1) == val[1]).mean())
    student = TorchPredictor(ckpt.model, ckpt.spec).predict_logits(images.images)
    return Reference(images, student, teacher_logits, val, teacher_top1, notes)


def _teacher_logits(teacher: Any, images: torch.Tensor) -> np.ndarray:
    """Teacher logits on uint8 images (resized if the teacher wants another input size)."""
    x = images
    if tuple(images.shape[-2:]) != tuple(teacher.spec.input_size):
        x = torch.nn.functional.interpolate(
            images.float(), size=teacher.spec.input_size, mode="bilinear", antialias=True
        )
    parts = [teacher.predict(normalize(x[i : i + 256], teacher.spec))[0] for i in range(0, len(x), 256)]
    return torch.cat(parts).float().numpy()


def validate_run(
    root: Path,
    images_dir: Path | None = None,
    gate: float = DEFAULT_GATE,
    val_dir: Path | None = None,
    threads: int = 0,
    limit: int = MAX_IMAGES,
    trust_pickle: bool = False,
) -> ValidationResult:
    """Check every artifact in export.json; write validate.json and each artifact's parity into export.json,
    holding the run folder's lock (one writer at a time, as `eikd-edge validate`)."""
    with writing_run(Path(root), "validate") as run:
        return _validate(run, images_dir, gate, val_dir, threads, limit, trust_pickle)


def _validate(
    run: RunPaths,
    images_dir: Path | None,
    gate: float,
    val_dir: Path | None,
    threads: int,
    limit: int,
    trust_pickle: bool,
) -> ValidationResult:
    if not run.root.is_dir():
        raise EikdError(f"run folder not found: {run.root}")
    ckpt = load_student(run.student)
    entries = read_record(run)["artifacts"]
    if not entries:
        raise EikdError(f"nothing exported in {run.export_dir}; run `eikd-edge export {run.root} --onnx` first")
    for name, entry in entries.items():
        if entry.get("status") != "failed" and not (run.export_dir / str(entry.get("path", ""))).is_file():
            raise EikdError(f"{name}: {run.export_dir / str(entry.get('path'))} is missing; re-run `eikd-edge export`")
    images = (
        folder_images(images_dir, ckpt.spec, limit) if images_dir else run_field_images(run, ckpt.spec, "parity", limit)
    )
    ref = reference_outputs(run, ckpt, images, val_dir, trust_pickle)
    checks = [check_artifact(run, name, entries[name], ckpt, ref, gate, threads) for name in _ordered(entries)]
    updates = {c.name: {"status": c.status, "parity": c.parity.to_dict()} for c in checks if c.parity is not None}
    merge_record(run, update=updates)
    summary = {
        "images": {"source": images.source, "n": len(images), "skipped": images.skipped},
        "gate": gate,
        "student": {
            "agree_teacher": ref.student_agree_teacher,
            "top1": top1(TorchPredictor(ckpt.model, ckpt.spec), ref),
        },
        "teacher": {"top1": ref.teacher_top1},
        "artifacts": {
            c.name: {"status": c.status, "reason": c.reason, "parity": c.parity.to_dict() if c.parity else None}
            for c in checks
        },
        "notes": ref.notes,
        "passed": not any(c.status in ("failed_gate", "failed") for c in checks),
    }
    path = write_json_atomic(run.root / "validate.json", summary)
    return ValidationResult(checks, ref, gate, summary, path)


def check_artifact(
    run: RunPaths, name: str, entry: dict[str, Any], ckpt: StudentCheckpoint, ref: Reference, gate: float, threads: int
) -> ArtifactCheck:
    """Run one artifact on the reference images; a TensorRT engine that cannot run here is skipped, not failed."""
    fmt = get_format(name)
    if entry.get("status") == "failed":
        return ArtifactCheck(name, fmt.precision, fmt.backend, "failed", entry.get("reason") or "export failed", None)
    if fmt.backend == "tensorrt" and (why := unavailable_reason()):
        return ArtifactCheck(name, fmt.precision, fmt.backend, "skipped", why, None)
    try:
        predictor = make_predictor(fmt, run.root, ckpt.spec, threads=threads)
        result = parity(predictor.predict_logits(ref.images.images), ref, gate, top1(predictor, ref))
    except Exception as exc:  # an artifact that cannot even run fails validation; it must not crash the others
        reason = str(exc) if isinstance(exc, EikdError) else f"{type(exc).__name__}: {str(exc)[:200]}"
        status = "failed"
        if fmt.backend == "tensorrt" and isinstance(exc, EikdError):
            status, reason = engine_failure_status(entry.get("target"), reason)
        return ArtifactCheck(name, fmt.precision, fmt.backend, status, reason, None)
    reason = gate_reason(result)
    return ArtifactCheck(name, fmt.precision, fmt.backend, status_for(result.to_dict()), reason, result)


def _ordered(entries: dict[str, Any]) -> list[str]:
    return [f.name for f in FORMATS if f.exported and f.name in entries]  # names from newer versions are left alone
