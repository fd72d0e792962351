"""The latency table (bench.json) as plain text cells, for the report and for `eikd-edge bench`'s own output. Kept
apart from tables.py because the bench command prints it without a Report."""

from __future__ import annotations

from collections.abc import Collection

from eikd_edge.bench_result import BenchResult, BenchRow
from eikd_edge.report import text as t
from eikd_edge.report.model import MIN_ITERS, Report, failed_models
from eikd_edge.report.tables import TextTable


def _preprocess_note(result: BenchResult) -> str:
    """Files to the uint8 inputs the table starts from, timed on the same images: add it for files in, logits out."""
    times = ", ".join(f"batch {p.batch}: p50 {t.ms(p.latency_ms.p50)}" for p in result.preprocess)
    return f"before these times, field files to inputs ({result.preprocess[0].policy}; 1 thread): {times} ms"


def bench(result: BenchResult | None, failed: Collection[str] = ()) -> TextTable:
    """Compact enough for a 100-column terminal: skip/fail reasons and budget stops go to footnotes.

    `failed`: artifacts whose validation failed (the report passes the latest validate.json state); such a row
    says "failed gate", never "ok", even though its timing succeeded. A single timed call shows "n=1", not a
    spread of ± 0.
    """
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    few = False
    for r in result.rows if result else []:
        few = few or (r.ok and r.iters < MIN_ITERS)
        rows.append(_row(r, failed, notes))
    if few:
        notes.append(f"timings from fewer than {MIN_ITERS} iterations are unreliable (`--iters 200` for real figures)")
    if result and result.preprocess:
        notes.append(_preprocess_note(result))
    caption = _caption(result)
    columns = ("backend", "model", "prec", "batch", "p50", "p90", "p99", "mean ± std", "img/s", "size", "agree T")
    return TextTable(
        "Latency (host to host: uint8 images in, logits out)",
        (*columns, "status"),
        rows,
        caption,
        left=("backend", "model", "prec", "status"),
        notes=list(dict.fromkeys(notes)),
    )


def _row(r: BenchRow, failed: Collection[str], notes: list[str]) -> tuple[str, ...]:
    """One row's cells; why it is not plain "ok" goes to `notes`."""
    lat = r.latency_ms
    spread = f"{t.ms(lat.mean)} ± {t.ms(lat.std)}" if lat and r.iters != 1 else f"{t.ms(lat.mean)} (n=1)" if lat else ""
    numbers = (t.ms(lat.p50), t.ms(lat.p90), t.ms(lat.p99), spread) if lat else ()
    status = r.status.split(":")[0]
    if not r.ok:
        notes.append(f"{r.model}: {r.status}")
    elif r.model in failed or r.gate_passed is False:
        status = "failed gate"
        notes.append(f"{r.model}: failed its validation gate: timed, but not fit to ship")
    elif r.budget_exhausted:
        status = "ok*"
        notes.append(f"{r.model} batch {r.batch}: budget spent after {r.iters} of {r.iters_requested} iterations")
    return (
        r.backend,
        r.model,
        r.precision if r.ok or "/" not in r.precision else t.DASH,
        t.DASH if r.batch is None else str(r.batch),
        *(numbers or (t.DASH,) * 4),
        t.rate(r.images_per_s),
        t.size(r.size_bytes),
        t.pct(r.agree_teacher),
        status,
    )


def _caption(result: BenchResult | None) -> str:
    """The machine and library versions the times were taken with."""
    machine = (result.machine if result else {}) or {}
    threads = sorted({r.threads for r in (result.rows if result else []) if r.threads})
    return (
        f"ms per call, {machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} cores, threads "
        f"{','.join(map(str, threads)) or '-'}), torch {machine.get('torch', '?')}, onnxruntime "
        f"{machine.get('onnxruntime', '?')}" + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
    )


def _spread(mean: float, std: float, iters: int) -> str:
    return f"{t.ms(mean)} (n=1)" if iters == 1 else f"{t.ms(mean)} ± {t.ms(std)}"


def run_bench(report: Report) -> TextTable:
    """The run's bench table with each artifact's state taken from its latest validation."""
    return bench(report.bench, failed_models(report))
