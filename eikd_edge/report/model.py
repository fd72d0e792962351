"""The Report: everything a run folder knows, gathered once into one validated object.

This module is the schema (pydantic); build.py gathers it from a run folder (reading files, running models) and
headline.py its headline tables. The render_* modules only turn a Report into text, so every output format shows
the same numbers. report.json is `Report.model_dump` and validates back into a Report.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from eikd_edge.bench_result import BenchResult
from eikd_edge.report.confusion import ConfusionSection
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


MIN_ITERS = 10  # fewer timed iterations than this: a latency (and any speed-up from it) is noise, not a measurement


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


def failed_models(report: Report) -> set[str]:
    """Artifacts whose latest validation (validate.json, else the export's own parity check) failed: drawn and
    labelled as such, never shown as "ok"."""
    failed = {r.model for r in report.headline.quality if is_failure(r.status) or r.gate_passed is False}
    for name, entry in ((report.validation or {}).get("artifacts") or {}).items():
        if isinstance(entry, dict) and is_failure(entry.get("status")):
            failed.add(str(name))
    return failed
