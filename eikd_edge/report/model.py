"""The Report: everything a run folder knows, gathered once into one validated object.

Building (this module) reads files and runs models; the render_* modules only turn a Report into text, so every
output format shows the same numbers. report.json is `Report.model_dump` and validates back into a Report.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from eikd_edge import __version__
from eikd_edge.bench import BenchResult
from eikd_edge.checkpoint import load_student
from eikd_edge.data import confined
from eikd_edge.errors import EikdError
from eikd_edge.export.fieldset import absolute_root
from eikd_edge.formats import FORMATS
from eikd_edge.models.zoo import count_macs, count_parameters
from eikd_edge.report.confusion import ConfusionSection, build_confusion
from eikd_edge.run import NAMES, RunPaths, TeacherChanged, read_json, read_resolved
from eikd_edge.run_files import (
    ClassCount,
    ExportEntry,
    ExportRecord,
    MetricsFile,
    RunFile,
    SelectionFile,
    StudentFigures,
    TeacherFigures,
    ValidationFile,
    read_export,
    read_metrics,
    read_selection,
    read_validation,
)
from eikd_edge.run_results import first, model_quality
from eikd_edge.status import is_failure

SCHEMA = "eikd-edge/report"
SECTIONS = {
    "headline": "Headline",
    "selection": "Selection",
    "training": "Training",
    "validation": "Validation",
    "benchmark": "Benchmark",
    "confusion": "Confusion matrices",
    "images": "Field images",
}
NOVEL_TITLE = "Novel field samples"  # a section only when selection.json has a "novel" entry
THUMBS = 8  # per group
MIN_ITERS = 10  # fewer timed iterations than this: a latency (and any speed-up from it) is noise, not a measurement
File = TypeVar("File", bound=RunFile)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassRow(_Strict):
    name: str
    candidates: int
    quota: int | None
    selected: int
    deficit: int


class Thumb(_Strict):
    group: str  # most_confident | least_confident | rejected
    path: str  # relative to the pool root
    predicted: str | None
    confidence: float | None


class SelectionSection(_Strict):
    method: str | None
    pool: dict[str, Any]
    selected: int
    train: int
    holdout: int
    fair_share: int | None = None  # the budget split equally across classes: what "deficit" is measured against
    classes: list[ClassRow]
    below_quota: list[str]
    thumbnails: list[Thumb]


class NovelCluster(_Strict):
    id: int
    size: int
    nearest_class: str
    nearest_cosine: float
    mean_confidence: float
    examples: list[str]  # relative to the pool root, closest to the cluster centre first


class NovelSection(_Strict):
    """selection.json's "novel" entry verbatim (eikd_edge.novel.NovelReport.to_json)."""

    count: int
    pool_size: int
    rule: str
    score_threshold: float
    clusters: list[NovelCluster]


class TrainingSection(_Strict):
    method: str | None
    summary: dict[str, Any]
    best_epoch: int | None
    history: list[dict[str, Any]]


class SizeRow(_Strict):
    model: str
    params: int | None
    macs: int | None
    size_bytes: int | None
    size_ratio: float | None  # teacher file size / this file size


class QualityRow(_Strict):
    model: str
    precision: str | None = None
    status: str | None = None
    agree_teacher: float | None = None
    agree_student: float | None = None
    top1: float | None = None
    gate: float | None = None
    gate_passed: bool | None = None


class SpeedRow(_Strict):
    model: str
    backend: str
    precision: str
    batch: int
    p50_ms: float
    images_per_s: float
    speedup: float  # vs the PyTorch eager student at the same batch size
    iters: int = 0  # timed iterations behind this row's p50 (the fewer of this row's and the reference's)
    reliable: bool = True  # iters >= MIN_ITERS: otherwise the speed-up is shown as unreliable, never headlined


class Headline(_Strict):
    compression: list[SizeRow]
    speed: list[SpeedRow]
    quality: list[QualityRow]
    validation_passed: bool | None
    gate: float | None


class Report(_Strict):
    schema_id: str = SCHEMA
    created_with: str
    created_at: str
    run: str
    sections: dict[str, str] = SECTIONS
    headline: Headline
    metrics: dict[str, Any] | None  # metrics.json verbatim: report.json is a superset of it
    selection: SelectionSection | None
    novel: NovelSection | None = None
    training: TrainingSection | None
    validation: dict[str, Any] | None  # validate.json verbatim
    export: dict[str, Any] | None  # export.json verbatim
    bench: BenchResult | None
    confusion: ConfusionSection | None
    notes: list[str]


def build_report(run: RunPaths, confusion: bool = True, trust_pickle: bool = False) -> Report:
    """Gather a run folder into a Report; missing stages become notes and empty sections, never errors.

    Any run folder works: one holding only `select`'s selection.json gets the selection and novel-sample sections
    (with thumbnails), a distilled one adds training, and export, validate and bench each add their sections.
    """
    if not run.root.is_dir():
        raise EikdError(f"run folder not found: {run.root}")
    read_resolved(run)  # a clear error when this is not a run folder at all
    notes: list[str] = []
    ckpt = load_student(run.student) if run.student.is_file() else None
    selection = read_selection(run) if run.selection.is_file() else None
    if selection is None:
        notes.append(f"{run.selection.name} not found")
    else:
        selection = _confine_paths(run, selection)
    if ckpt is None:
        notes.append(
            f"no {run.student.name}: this folder holds a selection only; `eikd-edge distill` trains the student, then "
            "export, validate and bench add their sections to this report"
        )
    stage_notes = notes if ckpt else []  # without a student the later stages cannot have run: one note says so
    missing_metrics = f"{run.metrics.name} not found: run `eikd-edge distill` to get training curves"
    metrics = _optional(read_metrics, run, run.metrics, stage_notes, missing_metrics)
    validation = _optional(
        read_validation, run, run.validation, stage_notes, f"not validated: run `eikd-edge validate {run.root}`"
    )
    bench_json = _optional_json(run.bench, stage_notes, f"no benchmark: run `eikd-edge bench {run.root}`")
    export = read_export(run) if run.export_record.is_file() else None
    if export is None and ckpt is not None:
        notes.append(f"nothing exported: run `eikd-edge export {run.root} --onnx --int8`")
    bench = None
    if bench_json:
        try:
            bench = BenchResult.model_validate(bench_json)
        except ValidationError:
            notes.append(f"{run.bench.name} is from another eikd-edge version: re-run `eikd-edge bench {run.root}`")
    notes += slower_int8_notes(export, bench)
    section = None
    if confusion and ckpt is not None:
        try:
            section = build_confusion(run, ckpt, trust_pickle)
            notes += section.notes
        except TeacherChanged:
            raise
        except EikdError as exc:
            notes.append(f"confusion matrices skipped: {exc}")
    novel = _novel(selection, notes) if selection else None
    metrics_json = metrics.as_json if metrics else None
    if metrics and metrics_json:
        sizes = metrics
    else:
        sizes = _student_sizes(ckpt.model, ckpt.spec.input_size) if ckpt else MetricsFile()
    return Report(
        created_with=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        run=str(run.root.resolve()),
        sections=_sections(novel),
        headline=_headline(run, sizes, export, validation, bench),
        metrics=metrics_json,
        selection=_selection(selection) if selection else None,
        novel=novel,
        training=_training(metrics) if metrics and metrics.history else None,
        validation=validation.as_json if validation else None,
        export=export.as_json if export else None,
        bench=bench,
        confusion=section,
        notes=notes,
    )


def _optional(
    read: Callable[[RunPaths], File], run: RunPaths, path: Path, notes: list[str], missing: str
) -> File | None:
    if not path.is_file():
        notes.append(missing)
        return None
    return read(run)


def _optional_json(path: Path, notes: list[str], missing: str) -> dict[str, Any] | None:
    if not path.is_file():
        notes.append(missing)
        return None
    return read_json(path, path.name)


def _confine_paths(run: RunPaths, selection: SelectionFile) -> SelectionFile:
    """Thumbnails are read from the pool: a manifest or novel-sample path that leaves the pool root is refused,
    so a crafted selection.json cannot make the report embed any other image on the machine."""
    root = selection.pool.root if selection.pool else None
    if not root:
        return selection.model_copy(update={"manifest": [], "novel": None})  # nowhere to read images from
    for entry in selection.manifest or []:
        confined(Path(root), entry.path)
    novel = selection.novel  # free-form until _novel checks it
    for cluster in (novel.get("clusters") or []) if isinstance(novel, dict) else []:
        for path in (cluster.get("examples") or []) if isinstance(cluster, dict) else []:
            confined(Path(root), str(path))
    pool = selection.pool.model_copy(update={"root": str(absolute_root(run, Path(root)))})
    return selection.model_copy(update={"pool": pool})


def _student_sizes(model: Any, input_size: tuple[int, int]) -> MetricsFile:
    """Params and MACs straight from the checkpoint when metrics.json is missing."""
    return MetricsFile(student=StudentFigures(params=count_parameters(model), macs=count_macs(model, input_size)))


def _selection(selection: SelectionFile) -> SelectionSection:
    manifest = selection.manifest or []
    classes = [
        ClassRow(
            name=c.name,
            candidates=c.candidates or 0,
            quota=c.quota,
            selected=c.selected or 0,
            deficit=c.deficit or 0,
        )
        for c in selection.classes or []
        if isinstance(c, ClassCount)
    ]
    if not classes:  # class names only (a hand-made selection.json): count from the manifest
        names = sorted({str(e.predicted) for e in manifest})
        classes = [
            ClassRow(
                name=name,
                candidates=sum(str(e.predicted) == name for e in manifest),
                quota=None,
                selected=sum(str(e.predicted) == name and bool(e.selected) for e in manifest),
                deficit=0,
            )
            for name in names
        ]
    selected = [e for e in manifest if e.selected]
    by_conf = sorted(selected, key=lambda e: float(e.confidence or 0.0))
    rejected = sorted((e for e in manifest if not e.selected), key=lambda e: float(e.score or 0.0))
    groups = {"most_confident": by_conf[::-1][:THUMBS], "least_confident": by_conf[:THUMBS], "rejected": rejected}
    thumbs = [
        Thumb(group=group, path=e.path, predicted=e.predicted, confidence=e.confidence)
        for group, entries in groups.items()
        for e in entries[:THUMBS]
    ]
    quotas = [c.quota for c in classes]
    fair = sum(q for q in quotas if q is not None) // len(classes) if classes and None not in quotas else None
    return SelectionSection(
        method=selection.method,
        pool=selection.pool.model_dump(exclude_unset=True) if selection.pool else {},
        selected=first(selection.selected_count, len(selected)),
        train=first(selection.train_count, sum(e.split == "train" for e in selected)),
        holdout=first(selection.holdout_count, sum(e.split == "holdout" for e in selected)),
        fair_share=fair,
        classes=classes,
        below_quota=list(selection.classes_below_quota or [c.name for c in classes if c.deficit > 0]),
        thumbnails=thumbs,
    )


def _novel(selection: SelectionFile, notes: list[str]) -> NovelSection | None:
    """The novel-sample clusters when the run looked for them; an unreadable entry is a note, not an error."""
    if selection.novel is None:
        return None
    try:
        return NovelSection.model_validate(selection.novel)
    except ValidationError:
        notes.append(f"{NAMES.selection.name}'s novel-sample entry is from another eikd-edge version: not shown")
        return None


def _sections(novel: NovelSection | None) -> dict[str, str]:
    """SECTIONS, with the novel-sample section after Selection only when there is one (otherwise page unchanged)."""
    if novel is None:
        return dict(SECTIONS)
    out: dict[str, str] = {}
    for key, title in SECTIONS.items():
        out[key] = title
        if key == "selection":
            out["novel"] = NOVEL_TITLE
    return out


def _training(metrics: MetricsFile) -> TrainingSection:
    return TrainingSection(
        method=metrics.method,
        summary=metrics.train or {},
        best_epoch=(metrics.student or StudentFigures()).best_epoch,
        history=list(metrics.history or []),
    )


def _headline(
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


def failed_models(report: Report) -> set[str]:
    """Artifacts whose latest validation (validate.json, else the export's own parity check) failed: drawn and
    labelled as such, never shown as "ok"."""
    failed = {r.model for r in report.headline.quality if is_failure(r.status) or r.gate_passed is False}
    for name, entry in ((report.validation or {}).get("artifacts") or {}).items():
        if isinstance(entry, dict) and is_failure(entry.get("status")):
            failed.add(str(name))
    return failed


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
