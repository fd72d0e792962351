"""The report's headline: compression, speed-up and quality rows, and the notes on an INT8 model slower than FP32.
Kept apart from build.py, which gathers the other sections, because these rows join export.json, validate.json and
bench.json model by model."""

from __future__ import annotations

from pathlib import Path

from eikd_edge.bench_result import BenchResult
from eikd_edge.formats import FORMATS
from eikd_edge.report.model import MIN_ITERS, Headline, QualityRow, SizeRow, SpeedRow
from eikd_edge.run import RunPaths, read_resolved
from eikd_edge.run_files import ExportEntry, ExportRecord, MetricsFile, StudentFigures, TeacherFigures, ValidationFile
from eikd_edge.run_results import model_quality


def build_headline(
    run: RunPaths,
    metrics: MetricsFile,
    export: ExportRecord | None,
    validation: ValidationFile | None,
    bench: BenchResult | None,
) -> Headline:
    teacher, student = metrics.teacher or TeacherFigures(), metrics.student or StudentFigures()
    teacher_path = Path(str((read_resolved(run).get("inputs") or {}).get("teacher") or ""))
    teacher_size = teacher_path.stat().st_size if teacher_path.is_file() else None
    artifacts = export.artifacts if export else {}
    sizes = [("teacher", teacher.params, teacher.macs, teacher_size)]
    if run.student.is_file():
        sizes.append(("pytorch", student.params, student.macs, run.student.stat().st_size))
    for fmt in FORMATS:
        if fmt.exported and fmt.name in artifacts:
            sizes.append((fmt.name, student.params, student.macs, artifacts[fmt.name].size_bytes))
    compression = [
        SizeRow(model=m, params=p, macs=c, size_bytes=s, size_ratio=teacher_size / s if teacher_size and s else None)
        for m, p, c, s in sizes
    ]
    speed = _speed_rows(bench) if bench is not None else []
    return Headline(
        compression=compression,
        speed=speed,
        quality=_quality_rows(run, artifacts) if run.student.is_file() else [],
        validation_passed=validation.passed if validation else None,
        gate=validation.gate if validation else None,
    )


def slower_int8_notes(export: ExportRecord | None, bench: BenchResult | None) -> list[str]:
    """An INT8 model that is not faster than FP32 is never recommended: on the exporting machine (export.json) and
    in this run's benchmark, batch by batch."""
    notes = []
    int8 = export.artifacts.get("onnx-int8") if export else None
    if int8 is not None and int8.recommended is False:
        notes.append(
            "onnx-int8 was not faster than FP32 on the machine that exported it: not recommended there, deploy "
            "student.onnx"
        )
    rows = {(r.model, r.batch): r for r in (bench.rows if bench else []) if r.ok and r.latency_ms}
    for (model, batch), row in sorted(rows.items(), key=lambda item: str(item[0])):
        fp32 = rows.get(("onnx", batch))
        if model != "onnx-int8" or fp32 is None or not row.latency_ms or not fp32.latency_ms:
            continue
        if row.latency_ms.p50 >= fp32.latency_ms.p50:
            notes.append(
                f"onnx-int8 is not faster than onnx (FP32) in this benchmark at batch {batch} "
                f"({row.latency_ms.p50:.2f} vs {fp32.latency_ms.p50:.2f} ms p50): not recommended on this machine"
            )
    return notes


def _speed_rows(bench: BenchResult) -> list[SpeedRow]:
    """Speed-ups over the PyTorch eager student; one from fewer than MIN_ITERS timed iterations (on either side)
    is kept but marked unreliable, so no renderer headlines it."""
    ups = bench.speedups()
    reference = {r.batch: r.iters for r in bench.rows if r.model == "pytorch" and r.ok}
    rows = []
    for row in bench.rows:
        if row.ok and row.latency_ms and row.batch is not None and (row.model, row.batch) in ups:
            iters = min(row.iters, reference.get(row.batch, row.iters))
            rows.append(
                SpeedRow(
                    model=row.model,
                    backend=row.backend,
                    precision=row.precision,
                    batch=row.batch,
                    p50_ms=row.latency_ms.p50,
                    images_per_s=row.images_per_s or 0.0,
                    speedup=ups[(row.model, row.batch)],
                    iters=iters,
                    reliable=iters >= MIN_ITERS,
                )
            )
    return rows


def _quality_rows(run: RunPaths, artifacts: dict[str, ExportEntry]) -> list[QualityRow]:
    quality = model_quality(run)
    names = ["teacher", "pytorch", *(f.name for f in FORMATS if f.exported and f.name in artifacts)]
    precision = {f.name: f.precision for f in FORMATS} | {"teacher": "fp32"}
    return [
        QualityRow(model=name, precision=_precision(artifacts.get(name), precision[name]), **quality[name])
        for name in names
    ]


def _precision(entry: ExportEntry | None, default: str) -> str | None:
    """The artifact's precision as export.json records it; the formats table's when it records none."""
    return entry.precision if entry is not None and "precision" in entry.model_fields_set else default
