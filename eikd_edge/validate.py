"""Classification-aware parity: every exported artifact vs the FP32 PyTorch student and the teacher, on field images.

The gate is label-free (top-1 agreement with the student), because field images have no labels; `--val` adds true
top-1 when a labeled folder exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eikd_edge.atomic import write_json_atomic
from eikd_edge.backends import backend_for
from eikd_edge.checkpoint import StudentCheckpoint, load_student
from eikd_edge.errors import EikdError
from eikd_edge.export.fieldset import folder_images, run_field_images
from eikd_edge.export.parity import (
    DEFAULT_GATE,
    MAX_IMAGES,
    Parity,
    Reference,
    gate_reason,
    parity,
    reference_outputs,
    top1,
)
from eikd_edge.export.record import merge_record, status_for
from eikd_edge.export.trt_checks import engine_failure_status
from eikd_edge.formats import FORMATS, get_format
from eikd_edge.run import RunPaths
from eikd_edge.run_files import ExportEntry, read_export
from eikd_edge.runfolder import writing_run
from eikd_edge.runtime import TorchPredictor
from eikd_edge.status import ArtifactStatus, is_failure


@dataclass(frozen=True)
class ArtifactCheck:
    name: str
    precision: str
    backend: str
    status: ArtifactStatus  # ok | failed_gate | failed | skipped
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
        return [c for c in self.checks if is_failure(c.status)]


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
    entries = read_export(run).artifacts
    if not entries:
        raise EikdError(f"nothing exported in {run.export_dir}; run `eikd-edge export {run.root} --onnx` first")
    for name, entry in entries.items():
        if entry.status != ArtifactStatus.FAILED and not (run.export_dir / (entry.path or "")).is_file():
            raise EikdError(f"{name}: {run.export_dir / str(entry.path)} is missing; re-run `eikd-edge export`")
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
        "passed": not any(is_failure(c.status) for c in checks),
    }
    path = write_json_atomic(run.validation, summary)
    return ValidationResult(checks, ref, gate, summary, path)


def check_artifact(
    run: RunPaths, name: str, entry: ExportEntry, ckpt: StudentCheckpoint, ref: Reference, gate: float, threads: int
) -> ArtifactCheck:
    """Run one artifact on the reference images; one of an optional backend that cannot run here (a TensorRT
    engine without TensorRT or a GPU) is skipped, not failed."""
    fmt = get_format(name)
    backend = backend_for(fmt)
    if entry.status == ArtifactStatus.FAILED:
        return ArtifactCheck(
            name, fmt.precision, fmt.backend, ArtifactStatus.FAILED, entry.reason or "export failed", None
        )
    if backend.optional and (why := backend.unavailable()):
        return ArtifactCheck(name, fmt.precision, fmt.backend, ArtifactStatus.SKIPPED, why, None)
    try:
        predictor = backend.predictor(fmt, run.root, ckpt.spec, threads=threads)
        result = parity(predictor.predict_logits(ref.images.images), ref, gate, top1(predictor, ref))
    except Exception as exc:  # an artifact that cannot even run fails validation; it must not crash the others
        reason = str(exc) if isinstance(exc, EikdError) else f"{type(exc).__name__}: {str(exc)[:200]}"
        status = ArtifactStatus.FAILED
        if backend.device_bound and isinstance(exc, EikdError):
            status, reason = engine_failure_status(entry.target, reason)
        return ArtifactCheck(name, fmt.precision, fmt.backend, status, reason, None)
    reason = gate_reason(result)
    return ArtifactCheck(name, fmt.precision, fmt.backend, status_for(result.to_dict()), reason, result)


def _ordered(entries: dict[str, Any]) -> list[str]:
    return [f.name for f in FORMATS if f.exported and f.name in entries]  # names from newer versions are left alone
