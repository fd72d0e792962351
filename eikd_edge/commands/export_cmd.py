"""`eikd-edge export RUN`: ONNX, ONNX Runtime INT8 and TensorRT artifacts with one status table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from eikd_edge.commands.options import DEFAULT_GATE, RunFolder, Threads, TrustPickle, check_gate, resolve_threads
from eikd_edge.console import console, err_console, print_command
from eikd_edge.errors import EikdError, GateFailed
from eikd_edge.fitted_tables import print_fitted
from eikd_edge.status import ArtifactStatus
from eikd_edge.ui import EXPORT_GATE_STYLE, human, pct, status_markup

if TYPE_CHECKING:
    from eikd_edge.export.pipeline import ExportRequest, ExportResult

# The targets `--target` falls back to (tests/test_help.py checks them against eikd_edge.export.targets):
# ONNX Runtime on this machine, or a TensorRT engine for a desktop NVIDIA GPU when --trt asks for one.
DEFAULT_TARGET = "x86-cpu"
DEFAULT_TRT_TARGET = "x86-dgpu"

COLUMNS = ("artifact", "prec", "size", "build s", "agree S", "agree T", "status")
LEGEND = "agree S / T: top-1 agreement with the FP32 student / the teacher on field images"


Onnx = Annotated[bool, typer.Option("--onnx", help="FP32 ONNX: dynamic batch, simplified, checked.")]
Int8 = Annotated[
    bool,
    typer.Option("--int8", help="ONNX Runtime static INT8 (QDQ) for CPU; with --trt also a TensorRT INT8 engine."),
]
Trt = Annotated[
    bool,
    typer.Option(
        "--trt",
        help="TensorRT engine(s) for --target (x86-dgpu when no --target is given); precisions from "
        "--fp32/--fp16/--int8 or the target.",
    ),
]
Fp16 = Annotated[bool, typer.Option("--fp16", help="With --trt: an FP16 engine.")]
Fp32 = Annotated[bool, typer.Option("--fp32", help="With --trt: an FP32 engine.")]
TargetName = Annotated[
    str | None,
    typer.Option(
        "--target",
        metavar="NAME",
        help="Device profile from export/targets (e.g. jetson-orin-nano).",
        show_default=f"{DEFAULT_TARGET}; {DEFAULT_TRT_TARGET} with --trt",
    ),
]
Opset = Annotated[int | None, typer.Option("--opset", help="ONNX opset.", show_default="the target's (17)")]
Exporter = Annotated[
    str,
    typer.Option(
        "--exporter",
        metavar="auto|torchscript|dynamo",
        help="ONNX exporter (auto: torchscript for opset <= 17).",
    ),
]
Gate = Annotated[float, typer.Option("--gate", help="Min top-1 agreement with the FP32 student.")]
CalibImages = Annotated[int, typer.Option("--calib-images", help="Field images used for INT8 calibration.")]
Images = Annotated[
    Path | None,
    typer.Option("--images", help="Field images for calibration and parity.", show_default="the run's selection"),
]
Qad = Annotated[
    str,
    typer.Option(
        "--qad",
        metavar="auto|always|never",
        help="Quantization-aware distillation for --int8: a short fine-tune through the INT8 quantization "
        "against the FP32 student (auto: when no post-training setting passes the gate).",
    ),
]


def export(
    run: RunFolder,
    onnx: Onnx = False,
    int8: Int8 = False,
    trt: Trt = False,
    fp16: Fp16 = False,
    fp32: Fp32 = False,
    target: TargetName = None,
    opset: Opset = None,
    exporter: Exporter = "auto",
    gate: Gate = DEFAULT_GATE,
    calib_images: CalibImages = 512,
    threads: Threads = 0,
    images: Images = None,
    trust_pickle: TrustPickle = False,
    qad: Qad = "auto",
) -> None:
    """Export the run's student; without format flags, the target's default formats.

    --trt without --target builds for x86-dgpu (a desktop NVIDIA GPU); name a Jetson with --target.
    """
    from eikd_edge.export.pipeline import export_run

    _check(trt, fp16, fp32, gate, exporter, opset, qad, calib_images)
    target = target or (DEFAULT_TRT_TARGET if trt else DEFAULT_TARGET)
    request = _request(
        onnx,
        int8,
        trt,
        fp16,
        fp32,
        target,
        opset,
        exporter,
        gate,
        calib_images,
        resolve_threads(threads),
        images,
        trust_pickle,
        qad,
    )
    result = export_run(run, request)  # holds the run folder's lock
    _print(result)
    _raise_failures(result, gate)


def _check(
    trt: bool, fp16: bool, fp32: bool, gate: float, exporter: str, opset: int | None, qad: str, calib_images: int
) -> None:
    """The options' values, refused before the run folder is touched."""
    from eikd_edge.export.int8_candidates import QAD_MODES
    from eikd_edge.export.onnx import EXPORTERS, MAX_OPSET, MIN_OPSET

    if (fp16 or fp32) and not trt:
        raise EikdError("--fp16/--fp32 choose TensorRT precisions: add --trt")
    check_gate(gate)
    if exporter not in EXPORTERS:
        raise EikdError(f"--exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise EikdError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET} (17 suits TensorRT 8.5+), got {opset}")
    if qad not in QAD_MODES:
        raise EikdError(f"--qad must be one of {', '.join(QAD_MODES)}, got {qad!r}")
    if calib_images < 1:
        raise EikdError("--calib-images must be at least 1")


def _raise_failures(result: ExportResult, gate: float) -> None:
    """A gate failure first (its own exit code), then any artifact that failed to build."""
    failed = [o for o in result.outcomes if o.status == ArtifactStatus.FAILED]
    gated = [o for o in result.outcomes if o.status == ArtifactStatus.FAILED_GATE]
    if gated:
        names = ", ".join(o.name for o in gated)
        raise GateFailed(f"{names} failed the {gate} top-1 agreement gate: {gated[0].reason}")
    if failed:
        raise EikdError(f"{', '.join(o.name for o in failed)} failed to export: {failed[0].reason}")


def _request(
    onnx: bool,
    int8: bool,
    trt: bool,
    fp16: bool,
    fp32: bool,
    target_name: str,
    opset: int | None,
    exporter: str,
    gate: float,
    calib_images: int,
    threads: int,
    images: Path | None,
    trust_pickle: bool,
    qad: str = "auto",
) -> ExportRequest:
    from eikd_edge.export.pipeline import ExportRequest
    from eikd_edge.export.targets import load_target

    target = load_target(target_name)
    chosen = [p for p, on in (("fp32", fp32), ("fp16", fp16), ("int8", int8)) if on]
    trt_precisions = tuple(chosen or target.precisions) if trt else ()
    if not (onnx or int8 or trt):  # nothing asked: the target's defaults
        onnx = True
        if target.backend == "tensorrt":
            trt_precisions = tuple(target.precisions)
        else:
            int8 = "int8" in target.precisions
    common = {"target": target_name, "opset": opset, "exporter": exporter, "gate": gate, "images": images}
    common.update(trust_pickle=trust_pickle, qad=qad)
    return ExportRequest(onnx, int8, trt_precisions, calib_images=calib_images, threads=threads, **common)


def _print(result: ExportResult) -> None:
    rows = []
    for outcome in result.outcomes:
        entry, parity = outcome.entry, outcome.entry.get("parity") or {}
        rows.append(
            (
                escape(outcome.name),
                escape(str(entry.get("precision", "-"))),
                human(entry["size_bytes"]) + "B" if "size_bytes" in entry else "-",
                f"{entry['build_s']:.1f}" if "build_s" in entry else "-",
                pct(parity.get("agree_student")),
                pct(parity.get("agree_teacher")),
                status_markup(outcome.status, EXPORT_GATE_STYLE),
            )
        )
    columns = [(c, "left" if c in ("artifact", "prec", "status") else "right") for c in COLUMNS]
    print_fitted(escape(f"Export for {result.target.name}"), columns, rows, console)
    console.print(LEGEND, highlight=False)
    for outcome in result.outcomes:
        if outcome.reason:
            console.print(escape(f"  {outcome.name}: {outcome.reason}"), highlight=False)
    quant = next((o.entry.get("quantization") for o in result.outcomes if o.entry.get("quantization")), None)
    if quant:
        console.print(
            f"INT8 setting chosen on this machine: [bold]{escape(quant['chosen']['label'])}[/] ({_int8_line(quant)})"
        )
        if quant.get("qad"):
            console.print(escape(_qad_line(quant["qad"])), highlight=False)
    for outcome in result.outcomes:
        if outcome.entry.get("qdq_qad"):
            console.print(escape(f"TensorRT Q/DQ model: {_qad_line(outcome.entry['qdq_qad'])}"), highlight=False)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if result.script is not None:
        err_console.print(
            "[yellow]TensorRT engines are built on the target[/] (an engine is tied to the GPU and TensorRT "
            "version that built it): copy the export folder to the device and run its build script:",
            highlight=False,
        )
        print_command("  ", f"cd {result.script.parent} && ./{result.script.name}", err_console)


def _int8_line(quant: dict) -> str:
    chosen, fp32 = quant["chosen"], quant["fp32"]
    batch = chosen["batch"]
    slower = "" if quant.get("faster_than_fp32", True) else "; not faster than FP32 here: not recommended"
    return (
        f"{chosen['latency_ms_batch']:.2f} ms vs FP32 {fp32['latency_ms_batch']:.2f} ms at batch {batch}, "
        f"agreement with FP32 {chosen['agree_fp32']:.2%}{slower}"
    )


def _qad_line(qad: dict) -> str:
    """What quantization-aware distillation did, in one line."""
    head = f"quantization-aware distillation ({qad['trigger']}; {qad['base']})"
    if "skipped" in qad:
        return f"{head} could not run: {qad['skipped']}"
    return (
        f"{head}: {qad['steps']} steps in {qad['train_s']:.0f} s on {qad['images']} field images the gate does not "
        f"grade; agreement with FP32 {qad['base_agree_fp32']:.2%} post-training -> {qad['agree_fp32']:.2%}"
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
