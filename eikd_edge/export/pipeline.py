"""The export stage: build the requested artifacts of a run, parity-test each, and merge them into export.json.

One artifact failing never stops the others (each gets a status and a reason, as in Ultralytics' export table).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eikd_edge.checkpoint import StudentCheckpoint, load_student
from eikd_edge.data import normalize
from eikd_edge.errors import EikdError
from eikd_edge.export import onnx as onnx_export
from eikd_edge.export import tensorrt as trt_export
from eikd_edge.export import trt_script
from eikd_edge.export.agreement import coarse_gate_note
from eikd_edge.export.device_bundle import clear_other_target, copy_device_script, write_parity_set
from eikd_edge.export.fieldset import folder_images, run_field_images
from eikd_edge.export.fp16 import write_fp16
from eikd_edge.export.int8_candidates import run_logits
from eikd_edge.export.parity import DEFAULT_GATE, MAX_IMAGES, Reference, gate_reason, parity, reference_outputs
from eikd_edge.export.qad import spare_field_images
from eikd_edge.export.qdq_tensorrt import TensorRTQDQ, quantize_for_tensorrt
from eikd_edge.export.quantize import choose_int8
from eikd_edge.export.record import merge_record, status_for
from eikd_edge.export.targets import DEFAULT_TARGET, Target, load_target
from eikd_edge.formats import BUILD_SCRIPT, FP16_ONNX, TRT_QDQ_ONNX, get_format, trt_format
from eikd_edge.models.teacher import file_sha256
from eikd_edge.ort_session import session
from eikd_edge.run import RunPaths
from eikd_edge.run_files import read_export
from eikd_edge.runfolder import writing_run
from eikd_edge.runtime import OnnxPredictor, TensorRTPredictor
from eikd_edge.status import ArtifactStatus


@dataclass(frozen=True)
class ExportRequest:
    """What `export_run` builds; the FP32 ONNX model is built anyway when it is missing or from another student."""

    onnx: bool = False
    int8: bool = False
    trt_precisions: tuple[str, ...] = ()
    target: str = DEFAULT_TARGET
    opset: int | None = None
    exporter: str = "auto"
    gate: float = DEFAULT_GATE
    calib_images: int = 512
    threads: int = 0
    latency_budget_s: float = 1.0
    images: Path | None = None  # a folder of field images, when the run's pool folder is not at hand
    qad: str = "auto"  # quantization-aware distillation: auto (when post-training INT8 fails) | always | never
    trust_pickle: bool = False  # from the command line only: may the teacher's file be unpickled


@dataclass(frozen=True)
class Outcome:
    name: str
    status: ArtifactStatus  # ok | failed_gate | failed | on_device
    reason: str | None
    entry: dict[str, Any]


@dataclass(frozen=True)
class ExportResult:
    outcomes: list[Outcome]
    target: Target
    record_path: Path
    script: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Context:
    run: RunPaths
    ckpt: StudentCheckpoint
    target: Target
    request: ExportRequest
    ref: Reference
    _calib: np.ndarray | None = None
    _evaluation: np.ndarray | None = None
    _spare: np.ndarray | tuple[()] | None = None  # () once decoded and found empty
    _fp32_reference: np.ndarray | None = None
    gated: list[Outcome] = field(default_factory=list)  # on-device artifacts refused before any script was written

    @property
    def chw(self) -> tuple[int, int, int]:
        return (3, *self.ckpt.spec.input_size)

    def calibration(self) -> np.ndarray:
        """Normalised, class-stratified selected field images (decoded once, shared by every INT8 path)."""
        if self._calib is None:
            limit, spec = self.request.calib_images, self.ckpt.spec
            if self.request.images is not None:
                images = folder_images(self.request.images, spec, limit)
            else:
                images = run_field_images(self.run, spec, "calibration", limit)
            self._calib = normalize(images.images, spec).numpy()
        return self._calib

    def fp32_reference(self) -> np.ndarray:
        """student.onnx's logits on the graded images in ONNX Runtime: what every INT8 model is graded against
        (computed once for ORT's INT8 and TensorRT's Q/DQ model)."""
        if self._fp32_reference is None:
            fp32 = get_format("onnx").path(self.run.root)
            self._fp32_reference = run_logits(session(fp32, self.request.threads), self.evaluation())
        return self._fp32_reference

    def evaluation(self) -> np.ndarray:
        """The graded parity images, normalised once for every INT8 path that grades itself on them."""
        if self._evaluation is None:
            self._evaluation = normalize(self.ref.images.images, self.ckpt.spec).numpy()
        return self._evaluation


def export_run(root: Path, request: ExportRequest) -> ExportResult:
    """Build the requested artifacts of the run in `root`, parity-test each and merge them into export.json,
    holding the run folder's lock (one writer at a time, as `eikd-edge export`)."""
    with writing_run(Path(root), "export") as run:
        return _export(run, request)


def _export(run: RunPaths, request: ExportRequest) -> ExportResult:
    if not run.root.is_dir():
        raise EikdError(f"run folder not found: {run.root}")
    target = load_target(request.target)
    if request.opset is not None and request.opset > target.max_opset:
        raise EikdError(
            f"--opset {request.opset} is above what target {target.name} parses (max_opset {target.max_opset}); "
            f"use --opset {target.max_opset} or lower"
        )
    if request.trt_precisions and target.backend != "tensorrt":
        raise EikdError(f"target {target.name} runs ONNX Runtime, not TensorRT; pick a TensorRT --target for --trt")
    ckpt = load_student(run.student)
    onnx_export.sweep_temp_folders()  # left by a killed export; RUN/export/.int8-* go with the run lock's sweep
    run.export_dir.mkdir(parents=True, exist_ok=True)
    switched = clear_other_target(run, target)  # one export folder states one target
    if request.images is not None:
        images = folder_images(request.images, ckpt.spec, MAX_IMAGES)
    else:
        images = run_field_images(run, ckpt.spec, "parity", MAX_IMAGES)
    ctx = _Context(run, ckpt, target, request, reference_outputs(run, ckpt, images, trust_pickle=request.trust_pickle))
    ctx.ref.notes.extend(switched)
    coarse = coarse_gate_note(len(images))
    if coarse and (request.int8 or request.trt_precisions):
        ctx.ref.notes.append(coarse)
    outcomes: list[Outcome] = []
    onnx_path = get_format("onnx").path(run.root)
    if request.onnx or not onnx_path.is_file() or _stale(onnx_path, ckpt):
        outcomes.append(_guarded(ctx, "onnx", lambda: _build_onnx(ctx, onnx_path)))
        ctx.ref.notes.extend(_stale_dependents(run, request))
    if not onnx_path.is_file():
        dependents = (["onnx-int8"] if request.int8 else []) + [trt_format(p).name for p in request.trt_precisions]
        outcomes += [_guarded(ctx, name, _needs_onnx) for name in dependents]
        return ExportResult(outcomes, target, run.export_record, None, ctx.ref.notes)
    if request.int8:
        outcomes.append(_guarded(ctx, "onnx-int8", lambda: _build_int8(ctx, onnx_path)))
    on_device: dict[str, dict[str, Any]] = {}
    reason = trt_export.build_blocker(target) if request.trt_precisions else None
    for precision in request.trt_precisions:
        name = trt_format(precision).name
        if reason is None:
            outcomes.append(_guarded(ctx, name, lambda p=precision: _build_engine(ctx, onnx_path, p)))
        else:
            on_device[name] = {"precision": precision, "engine": trt_format(precision).file, "reason": reason}
    script = _write_script(ctx, on_device) if on_device else None
    outcomes += ctx.gated
    for name, info in on_device.items():
        reason = f"{info['reason']}: build on the device with {BUILD_SCRIPT}"
        outcomes.append(Outcome(name, ArtifactStatus.ON_DEVICE, reason, info))
    return ExportResult(outcomes, target, run.export_record, script, ctx.ref.notes)


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


def _guarded(ctx: _Context, name: str, build: Callable[[], dict[str, Any]]) -> Outcome:
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


def _entry(ctx: _Context, name: str, path: Path, build_s: float, opset: int, logits: np.ndarray) -> dict[str, Any]:
    fmt = get_format(name)
    checked = parity(logits, ctx.ref, ctx.request.gate)
    result = checked.to_dict()
    status = status_for(result)
    return {
        "path": fmt.file,
        "size_bytes": path.stat().st_size,
        "precision": fmt.precision,
        "backend": fmt.backend,
        "opset": opset,
        "input_shape": ["batch", *ctx.chw],
        "build_s": round(build_s, 3),
        "status": status,
        "reason": None if status == ArtifactStatus.OK else gate_reason(checked),
        "parity": result,
    }


def _onnx_logits(ctx: _Context, path: Path, name: str) -> np.ndarray:
    predictor = OnnxPredictor(path, ctx.ckpt.spec, device="cpu", threads=ctx.request.threads, name=name)
    return predictor.predict_logits(ctx.ref.images.images)


def _build_onnx(ctx: _Context, path: Path) -> dict[str, Any]:
    opset = ctx.request.opset or ctx.target.opset
    limits = onnx_export.Parsable(ctx.target.name, ctx.target.max_opset, ctx.target.max_ir_version)
    built = onnx_export.export_onnx(ctx.ckpt, path, opset=opset, exporter=ctx.request.exporter, limits=limits)
    entry = _entry(ctx, "onnx", path, built.build_s, built.opset, _onnx_logits(ctx, path, "onnx"))
    entry.update(exporter=built.exporter, self_check_max_abs_dlogit=built.self_check_max_abs_dlogit)
    entry["source_sha256"] = file_sha256(ctx.ckpt.path)
    return entry


def _build_int8(ctx: _Context, onnx_path: Path) -> dict[str, Any]:
    path = get_format("onnx-int8").path(ctx.run.root)
    evaluation = ctx.evaluation()
    result = choose_int8(
        onnx_path,
        path,
        ctx.calibration(),
        evaluation,
        ctx.request.gate,
        batch=ctx.target.batch.opt,
        threads=ctx.request.threads,
        budget_s=ctx.request.latency_budget_s,
        qad=ctx.request.qad,
        qad_images=lambda: _qad_images(ctx),
        reference=ctx.fp32_reference(),
    )
    entry = _entry(ctx, "onnx-int8", path, result.build_s, _opset(path), _onnx_logits(ctx, path, "onnx-int8"))
    entry.update(quantization=result.record(), source="student.onnx", recommended=result.faster_than_fp32)
    if not result.faster_than_fp32:
        ctx.ref.notes.append(
            slower_int8_note(result.chosen.latency_ms_batch, result.fp32_latency_ms_batch, result.chosen.batch)
        )
    advice = result.advice()
    if entry["status"] == ArtifactStatus.FAILED_GATE and advice:
        entry["reason"] = f"{entry['reason']}; {advice}"
    return entry


def slower_int8_note(int8_ms: float, fp32_ms: float, batch: int) -> str:
    return (
        f"student.int8.onnx is not faster than student.onnx on this machine ({int8_ms:.2f} vs {fp32_ms:.2f} ms at "
        f"batch {batch}): not recommended here, deploy student.onnx (INT8 pays off on CPUs with VNNI or dot-product "
        "instructions; export on the target CPU to check)"
    )


def _qad_images(ctx: _Context) -> np.ndarray | None:
    """Normalised field images for quantization-aware distillation, none of them among the gate's images (decoded
    once, shared by the ONNX Runtime and the TensorRT INT8 models)."""
    if ctx._spare is None:
        spare = spare_field_images(ctx.run, ctx.ckpt.spec, set(ctx.ref.images.paths), ctx.request.images)
        ctx._spare = () if spare is None else normalize(spare.images, ctx.ckpt.spec).numpy()
    return None if isinstance(ctx._spare, tuple) else ctx._spare


def _build_engine(ctx: _Context, onnx_path: Path, precision: str) -> dict[str, Any]:
    fmt = trt_format(precision)
    path = fmt.path(ctx.run.root)
    calib = ctx.calibration() if precision == "int8" else None
    if trt_export.strongly_typed_here():  # TensorRT 11: the precision comes from an FP16 or Q/DQ ONNX
        _device_onnx(ctx, onnx_path, precision)
    record = trt_export.build_engine(onnx_path.parent, path, precision, ctx.target, ctx.chw, calib)
    logits = TensorRTPredictor(path, ctx.ckpt.spec, name=fmt.name).predict_logits(ctx.ref.images.images)
    entry = _entry(ctx, fmt.name, path, record["build_s"], _opset(onnx_path), logits)
    entry.update(target=ctx.target.name, build_record=path.name + ".json", tensorrt_version=record["tensorrt_version"])
    return entry


def _write_script(ctx: _Context, on_device: dict[str, dict[str, Any]]) -> Path | None:
    """build_engine.sh for the target, the FP16 and Q/DQ ONNX files every TensorRT version may need (with their
    ONNX Runtime parity), the parity set and eikd_device.py for validating the engines on the device. The Q/DQ model
    must pass the parity gate in ONNX Runtime first: below it, INT8 gets no build line (its on_device entry says why)
    and, if nothing else is left to build, there is no script at all."""
    onnx_path = get_format("onnx").path(ctx.run.root)
    refused: dict[str, dict[str, Any]] = {}
    for name, info in list(on_device.items()):
        if info["precision"] == "int8":
            if _qdq_for_device(ctx, info) is None:
                refused[name] = on_device.pop(name)
        elif (made := _device_onnx(ctx, onnx_path, info["precision"])) is not None:
            info["fp16_onnx"] = made.name
            info["fp16_parity_onnxruntime"] = parity(
                _onnx_logits(ctx, made, made.name), ctx.ref, ctx.request.gate
            ).to_dict()
    if not on_device:
        (ctx.run.export_dir / BUILD_SCRIPT).unlink(missing_ok=True)  # an older script would build the refused model
        merge_record(ctx.run, top={"on_device": refused, "target": ctx.target.name})
        return None
    precisions = [info["precision"] for info in on_device.values()]
    engines = {info["precision"]: info["engine"] for info in on_device.values()}
    text = trt_script.build_script(ctx.target, precisions, ctx.chw, engines)
    script = trt_script.write_build_script(ctx.run.export_dir / BUILD_SCRIPT, text)
    digest = write_parity_set(
        ctx.run.export_dir,
        ctx.ref.images.images.numpy(),
        ctx.ref.student,
        ctx.ckpt.spec,
        source=ctx.ref.images.source,
        gate=ctx.request.gate,
        target=ctx.target.name,
    )
    if copy_device_script(ctx.run.export_dir) is None:
        ctx.ref.notes.append("eikd_device.py is missing from this install: reinstall eikd-edge")
    for info in on_device.values():
        info.update(script=BUILD_SCRIPT, target=ctx.target.name, parity_reference_sha256=digest)
    merge_record(ctx.run, top={"on_device": {**on_device, **refused}, "target": ctx.target.name})
    return script


def _qdq_for_device(ctx: _Context, info: dict[str, Any]) -> str | None:
    """Write student.int8.trt.onnx and gate it; None (info marked failed_gate, with what to try) when it falls short."""
    built = _tensorrt_qdq(ctx)
    checked = parity(_onnx_logits(ctx, built.path, TRT_QDQ_ONNX), ctx.ref, ctx.request.gate)
    info.update(qdq_onnx=built.path.name, qdq_parity_onnxruntime=checked.to_dict())
    info.update(qdq_fp32_nodes=list(built.fp32_nodes), qdq_qad=built.qad, qdq_candidates=built.candidates)
    if checked.passed:
        return built.path.name
    worst = ", ".join(r["node"] for r in built.ranking[:4]) or "none found"
    reason = (
        f"the Q/DQ model for TensorRT fails the gate in ONNX Runtime: {gate_reason(checked)}; no INT8 build script "
        f"written (nodes that cost most when quantized: {worst}); try --calib-images "
        f"{max(2 * ctx.request.calib_images, 512)}, a lower --gate, or --fp16"
    )
    info.update(status=ArtifactStatus.FAILED_GATE, reason=reason, target=ctx.target.name)
    info.pop("script", None)
    ctx.gated.append(Outcome("trt-int8", ArtifactStatus.FAILED_GATE, reason, info))
    return None


def _tensorrt_qdq(ctx: _Context) -> TensorRTQDQ:
    """student.int8.trt.onnx, graded and (when it falls short) fine-tuned or mixed-precision as ORT's INT8 is."""
    return quantize_for_tensorrt(
        get_format("onnx").path(ctx.run.root),
        ctx.run.export_dir / TRT_QDQ_ONNX,
        ctx.calibration(),
        ctx.evaluation(),
        ctx.request.gate,
        ctx.request.threads,
        qad=ctx.request.qad,
        qad_images=lambda: _qad_images(ctx),
        reference=ctx.fp32_reference(),
    )


def _device_onnx(ctx: _Context, onnx_path: Path, precision: str) -> Path | None:
    """The FP16 ONNX (fp16) or the symmetric Q/DQ ONNX (int8) beside student.onnx; None for fp32."""
    if precision == "fp16":
        return write_fp16(onnx_path, ctx.run.export_dir / FP16_ONNX)
    if precision == "int8":
        return _tensorrt_qdq(ctx).path
    return None


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
