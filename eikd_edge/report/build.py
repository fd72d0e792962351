"""Building a Report from a run folder: reads each stage's files (missing ones become notes), runs the student for
the confusion matrices and fills the sections. Kept apart from the schema (model.py), which the renderers read
without pulling in the file readers and models."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from eikd_edge import __version__
from eikd_edge.bench_result import BenchResult
from eikd_edge.checkpoint import StudentCheckpoint, load_student
from eikd_edge.data import confined
from eikd_edge.errors import EikdError
from eikd_edge.export.fieldset import absolute_root
from eikd_edge.models.zoo import count_macs, count_parameters
from eikd_edge.report.confusion import ConfusionSection, build_confusion
from eikd_edge.report.headline import build_headline, slower_int8_notes
from eikd_edge.report.model import (
    NOVEL_TITLE,
    SECTIONS,
    ClassRow,
    NovelSection,
    Report,
    SelectionSection,
    Thumb,
    TrainingSection,
)
from eikd_edge.run import NAMES, RunPaths, TeacherChanged, read_json, read_resolved
from eikd_edge.run_files import (
    ClassCount,
    MetricsFile,
    RunFile,
    SelectionFile,
    StudentFigures,
    read_export,
    read_metrics,
    read_selection,
    read_validation,
)
from eikd_edge.run_results import first

THUMBS = 8  # per group


File = TypeVar("File", bound=RunFile)


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
    selection = _read_selection(run, ckpt is not None, notes)
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
    bench = _bench(run, bench_json, notes) if bench_json else None
    notes += slower_int8_notes(export, bench)
    section = _confusion(run, ckpt, trust_pickle, notes) if confusion and ckpt is not None else None
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
        headline=build_headline(run, sizes, export, validation, bench),
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


def _read_selection(run: RunPaths, has_student: bool, notes: list[str]) -> SelectionFile | None:
    """selection.json with its paths confined to the pool; a note when it is missing, and one when there is no
    student (a folder `select` wrote)."""
    selection = read_selection(run) if run.selection.is_file() else None
    if selection is None:
        notes.append(f"{run.selection.name} not found")
    else:
        selection = _confine_paths(run, selection)
    if not has_student:
        notes.append(
            f"no {run.student.name}: this folder holds a selection only; `eikd-edge distill` trains the student, then "
            "export, validate and bench add their sections to this report"
        )
    return selection


def _bench(run: RunPaths, bench_json: dict[str, Any], notes: list[str]) -> BenchResult | None:
    """bench.json as a BenchResult; a note instead when another version wrote it."""
    try:
        return BenchResult.model_validate(bench_json)
    except ValidationError:
        notes.append(f"{run.bench.name} is from another eikd-edge version: re-run `eikd-edge bench {run.root}`")
        return None


def _confusion(run: RunPaths, ckpt: StudentCheckpoint, trust_pickle: bool, notes: list[str]) -> ConfusionSection | None:
    """The confusion matrices, their notes added to `notes`; a note instead when they cannot be computed."""
    try:
        section = build_confusion(run, ckpt, trust_pickle)
        notes += section.notes
    except TeacherChanged:
        raise
    except EikdError as exc:
        notes.append(f"confusion matrices skipped: {exc}")
        return None
    return section


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
