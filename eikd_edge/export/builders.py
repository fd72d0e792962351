"""Building one artifact in this process (student.onnx, student.int8.onnx, a TensorRT engine) and its export.json
entry with the parity check. Kept apart from pipeline.py, which decides what to build and records failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eikd_edge.data import normalize
from eikd_edge.export import onnx as onnx_export
from eikd_edge.export import tensorrt as trt_export
from eikd_edge.export.context import ExportContext
from eikd_edge.export.fp16 import write_fp16
from eikd_edge.export.parity import gate_reason, parity
from eikd_edge.export.qad import spare_field_images
from eikd_edge.export.qdq_tensorrt import TensorRTQDQ, quantize_for_tensorrt
from eikd_edge.export.quantize import choose_int8
from eikd_edge.export.record import status_for
from eikd_edge.formats import FP16_ONNX, TRT_QDQ_ONNX, get_format, trt_format
from eikd_edge.models.teacher import file_sha256
from eikd_edge.runtime import OnnxPredictor, TensorRTPredictor
from eikd_edge.status import ArtifactStatus


def _entry(ctx: ExportContext, name: str, path: Path, build_s: float, opset: int, logits: np.ndarray) -> dict[str, Any]:
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


def onnx_logits(ctx: ExportContext, path: Path, name: str) -> np.ndarray:
    predictor = OnnxPredictor(path, ctx.ckpt.spec, device="cpu", threads=ctx.request.threads, name=name)
    return predictor.predict_logits(ctx.ref.images.images)


def build_onnx(ctx: ExportContext, path: Path) -> dict[str, Any]:
    opset = ctx.request.opset or ctx.target.opset
    limits = onnx_export.Parsable(ctx.target.name, ctx.target.max_opset, ctx.target.max_ir_version)
    built = onnx_export.export_onnx(ctx.ckpt, path, opset=opset, exporter=ctx.request.exporter, limits=limits)
    entry = _entry(ctx, "onnx", path, built.build_s, built.opset, onnx_logits(ctx, path, "onnx"))
    entry.update(exporter=built.exporter, self_check_max_abs_dlogit=built.self_check_max_abs_dlogit)
    entry["source_sha256"] = file_sha256(ctx.ckpt.path)
    return entry


def build_int8(ctx: ExportContext, onnx_path: Path) -> dict[str, Any]:
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
        qad_images=lambda: qad_images(ctx),
        reference=ctx.fp32_reference(),
    )
    entry = _entry(ctx, "onnx-int8", path, result.build_s, _opset(path), onnx_logits(ctx, path, "onnx-int8"))
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


def qad_images(ctx: ExportContext) -> np.ndarray | None:
    """Normalised field images for quantization-aware distillation, none of them among the gate's images (decoded
    once, shared by the ONNX Runtime and the TensorRT INT8 models)."""
    if ctx._spare is None:
        spare = spare_field_images(ctx.run, ctx.ckpt.spec, set(ctx.ref.images.paths), ctx.request.images)
        ctx._spare = () if spare is None else normalize(spare.images, ctx.ckpt.spec).numpy()
    return None if isinstance(ctx._spare, tuple) else ctx._spare


def build_trt_engine(ctx: ExportContext, onnx_path: Path, precision: str) -> dict[str, Any]:
    fmt = trt_format(precision)
    path = fmt.path(ctx.run.root)
    calib = ctx.calibration() if precision == "int8" else None
    if trt_export.strongly_typed_here():  # TensorRT 11: the precision comes from an FP16 or Q/DQ ONNX
        device_onnx(ctx, onnx_path, precision)
    record = trt_export.build_engine(onnx_path.parent, path, precision, ctx.target, ctx.chw, calib)
    logits = TensorRTPredictor(path, ctx.ckpt.spec, name=fmt.name).predict_logits(ctx.ref.images.images)
    entry = _entry(ctx, fmt.name, path, record["build_s"], _opset(onnx_path), logits)
    entry.update(target=ctx.target.name, build_record=path.name + ".json", tensorrt_version=record["tensorrt_version"])
    return entry


def tensorrt_qdq(ctx: ExportContext) -> TensorRTQDQ:
    """student.int8.trt.onnx, graded and (when it falls short) fine-tuned or mixed-precision as ORT's INT8 is."""
    return quantize_for_tensorrt(
        get_format("onnx").path(ctx.run.root),
        ctx.run.export_dir / TRT_QDQ_ONNX,
        ctx.calibration(),
        ctx.evaluation(),
        ctx.request.gate,
        ctx.request.threads,
        qad=ctx.request.qad,
        qad_images=lambda: qad_images(ctx),
        reference=ctx.fp32_reference(),
    )


def device_onnx(ctx: ExportContext, onnx_path: Path, precision: str) -> Path | None:
    """The FP16 ONNX (fp16) or the symmetric Q/DQ ONNX (int8) beside student.onnx; None for fp32."""
    if precision == "fp16":
        return write_fp16(onnx_path, ctx.run.export_dir / FP16_ONNX)
    if precision == "int8":
        return tensorrt_qdq(ctx).path
    return None


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
