"""The engines TensorRT cannot build here: build_engine.sh for the target, the FP16 and Q/DQ ONNX files it needs
(the Q/DQ one gated in ONNX Runtime first), the parity set and eikd_device.py. Kept apart from builders.py, which
builds artifacts in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eikd_edge.export import trt_script
from eikd_edge.export.builders import device_onnx, onnx_logits, tensorrt_qdq
from eikd_edge.export.context import ExportContext, Outcome
from eikd_edge.export.device_bundle import copy_device_script, write_parity_set
from eikd_edge.export.parity import gate_reason, parity
from eikd_edge.export.record import merge_record
from eikd_edge.formats import BUILD_SCRIPT, TRT_QDQ_ONNX, get_format
from eikd_edge.status import ArtifactStatus


def write_device_script(ctx: ExportContext, on_device: dict[str, dict[str, Any]]) -> Path | None:
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
        elif (made := device_onnx(ctx, onnx_path, info["precision"])) is not None:
            info["fp16_onnx"] = made.name
            info["fp16_parity_onnxruntime"] = parity(
                onnx_logits(ctx, made, made.name), ctx.ref, ctx.request.gate
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


def _qdq_for_device(ctx: ExportContext, info: dict[str, Any]) -> str | None:
    """Write student.int8.trt.onnx and gate it; None (info marked failed_gate, with what to try) when it falls short."""
    built = tensorrt_qdq(ctx)
    checked = parity(onnx_logits(ctx, built.path, TRT_QDQ_ONNX), ctx.ref, ctx.request.gate)
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
