"""`eikd-edge validate RUN`: every exported artifact vs the PyTorch student and the teacher, with a label-free gate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from eikd_edge.commands.options import DEFAULT_GATE, RunFolder, Threads, TrustPickle, check_gate, resolve_threads
from eikd_edge.console import console, err_console
from eikd_edge.device_result import DeviceResult, import_device_result
from eikd_edge.errors import GateFailed
from eikd_edge.fitted_tables import print_fitted
from eikd_edge.run import NAMES
from eikd_edge.status import ArtifactStatus
from eikd_edge.ui import pct, status_markup

if TYPE_CHECKING:
    from eikd_edge.validate import ValidationResult

# eikd_edge.export.parity's default, spelled here so `--help` need not import it (tests/test_help.py compares them)
MAX_IMAGES = 2000
LEGEND = (
    "agree S / T: top-1 agreement with the FP32 student / the teacher",
    "flips: top-1 changed vs the student",
    "Δprob, Δlogit: largest |difference| in softmax and logits",
)


def validate(
    run: RunFolder,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Field images to compare on.", show_default="the run's holdout slice"),
    ] = None,
    gate: Annotated[
        float, typer.Option("--gate", help="Min top-1 agreement with the FP32 PyTorch student.")
    ] = DEFAULT_GATE,
    val: Annotated[
        Path | None, typer.Option("--val", help="Labeled ImageFolder: adds true top-1 per artifact.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many field images.")] = MAX_IMAGES,
    threads: Threads = 0,
    trust_pickle: TrustPickle = False,
    device_result: Annotated[
        Path | None,
        typer.Option(
            "--device-result",
            help="Import device-result.json from `python3 eikd_device.py validate` run on the device.",
        ),
    ] = None,
) -> None:
    """Parity of every artifact; exit code 2 when one fails the gate."""
    from eikd_edge.run import RunPaths
    from eikd_edge.runfolder import writing_run
    from eikd_edge.validate import validate_run

    threads = resolve_threads(threads)
    check_gate(gate)
    if device_result is not None:
        with writing_run(run, "validate"):
            imported = import_device_result(RunPaths(run), device_result)
        _print_device(imported)
        failed = [e for e in imported.engines.values() if e.status != ArtifactStatus.OK]
        if failed:
            names = ", ".join(f"{e.name} ({e.reason})" for e in failed)
            raise GateFailed(f"{len(failed)} engine(s) failed validation on the device: {names}")
        return
    result = validate_run(run, images, gate, val, threads, limit, trust_pickle)  # holds the run folder's lock
    _print(result)
    if result.failed:
        names = ", ".join(f"{c.name} ({c.reason})" for c in result.failed)
        raise GateFailed(f"{len(result.failed)} artifact(s) failed validation: {names}")


def _print(result: ValidationResult) -> None:
    summary = result.summary
    images = summary["images"]
    has_val = result.reference.val is not None
    columns = ("artifact", "agree S", "agree T", "flips", "Δprob", "Δlogit", *(("top-1",) if has_val else ()), "status")
    val_cell = (lambda value: (pct(value),)) if has_val else (lambda value: ())
    student = summary["student"]
    rows = [("student", "-", pct(student["agree_teacher"]), "-", "-", "-", *val_cell(student["top1"]), "ref")]
    if has_val:
        rows.append(("teacher", "-", "-", "-", "-", "-", pct(summary["teacher"]["top1"]), "ref"))
    for check in result.checks:
        p = check.parity
        cells = ("-",) * 5
        if p is not None:
            cells = (
                pct(p.agree_student),
                pct(p.agree_teacher),
                pct(p.flip_rate),
                _sci(p.max_abs_dprob),
                _sci(p.max_abs_dlogit),
            )
        rows.append((escape(check.name), *cells, *val_cell(p.top1 if p else None), status_markup(check.status)))
    title = f"Parity on {images['n']} {escape(str(images['source']))} images, gate {result.gate:.1%}"
    print_fitted(title, [(c, "left" if c in ("artifact", "status") else "right") for c in columns], rows, console)
    for line in (*LEGEND, *(("top-1: accuracy on --val",) if has_val else ())):
        console.print(line, highlight=False, markup=False)
    for check in result.checks:
        if check.reason:
            console.print(escape(f"  {check.name}: {check.reason}"), highlight=False)
    for note in result.reference.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    console.print(escape(f"written: {result.path} and {NAMES.export_record.name} parity"), highlight=False)


def _print_device(result: DeviceResult) -> None:
    info = result.device
    where = info.board or info.gpu_name or "unknown device"
    columns = ("engine", "agree S", "flips", "Δlogit", "p50 ms (batch)", "img/s", "status")
    rows = []
    for engine in result.engines.values():
        p = engine.parity
        lat = engine.latency[-1] if engine.latency else None
        rows.append(
            (
                escape(engine.name),
                pct(p.agree_student) if p else "-",
                pct(p.flip_rate) if p else "-",
                _sci(p.max_abs_dlogit) if p and p.max_abs_dlogit is not None else "-",
                " / ".join(f"{x.p50_ms:.2f} ({x.batch})" for x in engine.latency) or "-",
                f"{lat.images_per_s:.0f}" if lat and lat.images_per_s else "-",
                status_markup(engine.status),
            )
        )
    title = escape(f"On the device: {where}, TensorRT {info.tensorrt_version}, {result.parity_set.n} images")
    print_fitted(title, [(c, "left" if c in ("engine", "status") else "right") for c in columns], rows, console)
    for line in ("agree S: top-1 agreement with the FP32 PyTorch student", "p50: host-to-host latency per batch"):
        console.print(line, highlight=False, markup=False)
    for engine in result.engines.values():
        if engine.reason:
            console.print(escape(f"  {engine.name}: {engine.reason}"), highlight=False)
    console.print(
        f"imported into {NAMES.export_record.name} (device_results) and {NAMES.validation.name} (device)",
        highlight=False,
    )


def _sci(value: float) -> str:
    return f"{value:.1e}"


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
