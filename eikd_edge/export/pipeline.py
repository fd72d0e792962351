"""The export stage: build the requested artifacts of a run, parity-test each, and merge them into export.json.

One artifact failing never stops the others (each gets a status and a reason, as in Ultralytics' export table).
context.py holds the request and what the builders share, builders.py builds each artifact in this process and
on_device.py writes what the device builds (build_engine.sh and its inputs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eikd_edge.checkpoint import StudentCheckpoint, load_student
from eikd_edge.errors import EikdError
from eikd_edge.export import onnx as onnx_export
from eikd_edge.export import tensorrt as trt_export
from eikd_edge.export.agreement import coarse_gate_note
from eikd_edge.export.builders import build_int8, build_onnx, build_trt_engine
from eikd_edge.export.context import ExportContext, ExportRequest, Outcome
from eikd_edge.export.device_bundle import clear_other_target
from eikd_edge.export.fieldset import folder_images, run_field_images
from eikd_edge.export.on_device import write_device_script
from eikd_edge.export.parity import MAX_IMAGES, reference_outputs
from eikd_edge.export.record import merge_record
from eikd_edge.export.targets import Target, load_target
from eikd_edge.formats import BUILD_SCRIPT, get_format, trt_format
from eikd_edge.models.teacher import file_sha256
from eikd_edge.run import RunPaths
from eikd_edge.run_files import read_export
from eikd_edge.runfolder import writing_run
from eikd_edge.status import ArtifactStatus


@dataclass(frozen=True)
class ExportResult:
    outcomes: list[Outcome]
    target: Target
    record_path: Path
    script: Path | None = None
    notes: list[str] = field(default_factory=list)


def export_run(root: Path, request: ExportRequest) -> ExportResult:
    """Build the requested artifacts of the run in `root`, parity-test each and merge them into export.json,
    holding the run folder's lock (one writer at a time, as `eikd-edge export`)."""
    with writing_run(Path(root), "export") as run:
        return _export(run, request)


def _export(run: RunPaths, request: ExportRequest) -> ExportResult:
    if not run.root.is_dir():
        raise EikdError(f"run folder not found: {run.root}")
    target = _target(request)
    ckpt = load_student(run.student)
    onnx_export.sweep_temp_folders()  # left by a killed export; RUN/export/.int8-* go with the run lock's sweep
    run.export_dir.mkdir(parents=True, exist_ok=True)
    switched = clear_other_target(run, target)  # one export folder states one target
    if request.images is not None:
        images = folder_images(request.images, ckpt.spec, MAX_IMAGES)
    else:
        images = run_field_images(run, ckpt.spec, "parity", MAX_IMAGES)
    ref = reference_outputs(run, ckpt, images, trust_pickle=request.trust_pickle)
    ctx = ExportContext(run, ckpt, target, request, ref)
    ctx.ref.notes.extend(switched)
    coarse = coarse_gate_note(len(images))
    if coarse and (request.int8 or request.trt_precisions):
        ctx.ref.notes.append(coarse)
    outcomes: list[Outcome] = []
    onnx_path = get_format("onnx").path(run.root)
    if request.onnx or not onnx_path.is_file() or _stale(onnx_path, ckpt):
        outcomes.append(_guarded(ctx, "onnx", lambda: build_onnx(ctx, onnx_path)))
        ctx.ref.notes.extend(_stale_dependents(run, request))
    if not onnx_path.is_file():
        dependents = (["onnx-int8"] if request.int8 else []) + [trt_format(p).name for p in request.trt_precisions]
        outcomes += [_guarded(ctx, name, _needs_onnx) for name in dependents]
        return ExportResult(outcomes, target, run.export_record, None, ctx.ref.notes)
    if request.int8:
        outcomes.append(_guarded(ctx, "onnx-int8", lambda: build_int8(ctx, onnx_path)))
    on_device: dict[str, dict[str, Any]] = {}
    reason = trt_export.build_blocker(target) if request.trt_precisions else None
    for precision in request.trt_precisions:
        name = trt_format(precision).name
        if reason is None:
            outcomes.append(_guarded(ctx, name, lambda p=precision: build_trt_engine(ctx, onnx_path, p)))
        else:
            on_device[name] = {"precision": precision, "engine": trt_format(precision).file, "reason": reason}
    script = write_device_script(ctx, on_device) if on_device else None
    outcomes += ctx.gated
    for name, info in on_device.items():
        reason = f"{info['reason']}: build on the device with {BUILD_SCRIPT}"
        outcomes.append(Outcome(name, ArtifactStatus.ON_DEVICE, reason, info))
    return ExportResult(outcomes, target, run.export_record, script, ctx.ref.notes)


def _target(request: ExportRequest) -> Target:
    """The requested target, refused when the request asks for what it cannot parse or run."""
    target = load_target(request.target)
    if request.opset is not None and request.opset > target.max_opset:
        raise EikdError(
            f"--opset {request.opset} is above what target {target.name} parses (max_opset {target.max_opset}); "
            f"use --opset {target.max_opset} or lower"
        )
    if request.trt_precisions and target.backend != "tensorrt":
        raise EikdError(f"target {target.name} runs ONNX Runtime, not TensorRT; pick a TensorRT --target for --trt")
    return target


def _stale_dependents(run: RunPaths, request: ExportRequest) -> list[str]:
    """Artifacts built from the previous student.onnx that this call does not rebuild."""
    rebuilt = (
        {"onnx"} | ({"onnx-int8"} if request.int8 else set()) | {trt_format(p).name for p in request.trt_precisions}
    )
    existing = read_export(run).artifacts
    return [
        f"{name} was built from the previous student.onnx; export it again"
        for name, entry in existing.items()
        if name not in rebuilt and entry.status != ArtifactStatus.FAILED
    ]


def _needs_onnx() -> dict[str, Any]:
    raise EikdError("needs student.onnx, which could not be built")


def _stale(onnx_path: Path, ckpt: StudentCheckpoint) -> bool:
    """An ONNX exported from another student.pt must not be quantized or built into an engine."""
    try:
        return onnx_export.read_metadata(onnx_path).get("source_checkpoint_sha256") != file_sha256(ckpt.path)
    except Exception:
        return True


def _guarded(ctx: ExportContext, name: str, build: Callable[[], dict[str, Any]]) -> Outcome:
    """Build one artifact; any failure becomes a 'failed' entry with its reason instead of stopping the others."""
    fmt = get_format(name)
    start = time.perf_counter()
    try:
        entry = build()
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = message if isinstance(exc, EikdError) else f"{type(exc).__name__}: {message}"[:300]
        entry = {
            "path": fmt.file,
            "precision": fmt.precision,
            "backend": fmt.backend,
            "build_s": round(time.perf_counter() - start, 3),
            "status": ArtifactStatus.FAILED,
            "reason": reason,
        }
    merge_record(ctx.run, replace={name: entry}, top={"target": ctx.target.name})
    return Outcome(name, entry["status"], entry.get("reason"), entry)
