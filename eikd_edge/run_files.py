"""The JSON files of a run folder as the commands read them back: one pydantic model and one reader per file.

A model types every top-level key its readers use; what the readers leave alone (free-form sections, fields of
newer or older versions) is kept as written (`extra="allow"`). The models only read: each file is still written
by its stage's own dict (Selection.to_json, Trainer.metrics, validate, export.record), so what is on disk does not
depend on them. `as_json` is a file's JSON object exactly as read, for the report sections that embed a file
verbatim and for the stages that merge into a file and write it back.

A file may have been edited by hand or come from a shared drive; a wrong type (`"pool": []`,
`"candidates": "many"`) is one clear EikdError naming the field, not a crash deep inside a command.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from eikd_edge import __version__
from eikd_edge.errors import EikdError
from eikd_edge.run import RunPaths, read_json


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # newer or older files may carry more fields: left alone


class RunFile(_Open):
    """One whole file of the run folder."""

    _as_read: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def as_json(self) -> dict[str, Any]:
        """The JSON object as the file holds it; for a model built in memory (a test's fixture), what to write."""
        if self._as_read is None:
            return self.model_dump(mode="json", exclude_unset=True)
        return self._as_read


# selection.json: Selection.to_json(), plus "synthesis" (distill --synthesize) and "novel" (select --novel)


class SelectionPool(_Open):
    root: str | None = None
    files: int | None = None
    decoded: int | None = None
    skipped: dict[str, Any] | None = None  # {"count", "by_reason", ...} (data.DecodeReport)
    scoring_s: float | None = None


class ClassCount(_Open):
    name: str
    candidates: int | None = None
    quota: int | None = None
    selected: int | None = None
    deficit: int | None = None


class ManifestEntry(_Open):
    path: str  # relative to pool.root
    predicted: str | None = None
    confidence: float | None = None
    score: float | None = None
    selected: bool | None = None
    split: str | None = None  # train | holdout | agreement | None


class SelectionFile(RunFile):
    method: str | None = None
    sampler: str | None = None
    closeness_from: list[str] | None = None
    settings: dict[str, Any] | None = None  # the recipe's selection section
    pool: SelectionPool | None = None
    selected_count: int | None = None
    train_count: int | None = None
    holdout_count: int | None = None
    agreement_count: int | None = None
    classes: list[ClassCount | str] | None = None  # a bare name: a hand-made file; the report counts the manifest
    classes_below_quota: list[str] | None = None
    manifest: list[ManifestEntry] | None = None
    synthesis: dict[str, Any] | None = None
    novel: Any = None  # NovelReport.to_json(); the report checks it and shows a note when it cannot read it


# metrics.json: Trainer.metrics(), plus "synthesis" and the student's starting weights


class TeacherFigures(_Open):
    top1: float | None = None  # on --val; NaN or None when not measured
    params: int | None = None
    macs: int | None = None
    format: str | None = None


class StudentFigures(_Open):
    arch: str | None = None
    top1: float | None = None
    params: int | None = None
    macs: int | None = None
    best_epoch: int | None = None
    kept_epoch: int | None = None


class AgreementFigures(_Open):
    top1: float | None = None  # student vs teacher on the fixed field slice


class MetricsFile(RunFile):
    method: str | None = None
    teacher: TeacherFigures | None = None
    student: StudentFigures | None = None
    epochs: dict[str, Any] | None = None
    agreement: AgreementFigures | None = None
    seed: int | None = None
    selection: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    val: str | None = None
    synthesis: dict[str, Any] | None = None


# validate.json: validate's summary, plus "device" (validate --device-result)


class StudentCheck(_Open):
    agree_teacher: float | None = None
    top1: float | None = None


class TeacherCheck(_Open):
    top1: float | None = None


class ArtifactCheck(_Open):
    status: str | None = None  # an eikd_edge.status.ArtifactStatus: ok | failed_gate | failed | skipped
    reason: str | None = None
    parity: dict[str, Any] | None = None  # export.parity.Parity.to_dict()


class ValidationFile(RunFile):
    images: dict[str, Any] | None = None
    gate: float | None = None
    student: StudentCheck | None = None
    teacher: TeacherCheck | None = None
    artifacts: dict[str, ArtifactCheck] | None = None
    notes: list[str] | None = None
    passed: bool | None = None
    device: dict[str, Any] | None = None


# export/export.json: one entry per artifact, merged across export and validate (export.record)


class ExportEntry(_Open):
    path: str | None = None  # relative to RUN/export
    size_bytes: int | None = None
    precision: str | None = None
    backend: str | None = None
    status: str | None = None  # an eikd_edge.status.ArtifactStatus: ok | failed_gate | failed
    reason: str | None = None
    parity: dict[str, Any] | None = None
    recommended: bool | None = None  # onnx-int8: faster than FP32 on the exporting machine
    target: str | None = None  # TensorRT engines: the target they were built for


class ExportRecord(RunFile):
    artifacts: dict[str, ExportEntry]
    target: str | None = None
    created_with: str | None = None


File = TypeVar("File", bound=RunFile)
_RERUN = "the file was edited or damaged: re-run"


def _validated(model: type[File], data: dict[str, Any], where: str, fix: str) -> File:
    """`data` as `model`; EikdError naming the first field of the wrong type."""
    try:
        loaded = model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"] if part not in _UNION_TAGS)  # no model names
        message = re.sub(r" or instance of \w+", "", str(error["msg"]))
        raise EikdError(f"{where}: {field}: {message}; {fix}") from None
    loaded._as_read = data
    return loaded


def read_selection(run: RunPaths) -> SelectionFile:
    data = read_json(run.selection, "selection manifest")
    return _validated(SelectionFile, data, str(run.selection), f"{_RERUN} `eikd-edge select`/`distill`")


def read_metrics(run: RunPaths) -> MetricsFile:
    data = read_json(run.metrics, run.metrics.name)
    return _validated(MetricsFile, data, str(run.metrics), f"{_RERUN} `eikd-edge distill`")


def read_validation(run: RunPaths) -> ValidationFile:
    data = read_json(run.validation, run.validation.name)
    return _validated(ValidationFile, data, str(run.validation), f"{_RERUN} `eikd-edge validate`")


def read_export(run: RunPaths) -> ExportRecord:
    """The current export.json, or an empty record when nothing was exported yet."""
    path = run.export_record
    fix = "delete it and export again"
    if not path.is_file():
        return _validated(ExportRecord, {"artifacts": {}, "target": None, "created_with": __version__}, "", fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EikdError(f"cannot read {path}: {exc}; {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
        raise EikdError(f"{path} is not an eikd-edge export record; {fix}")
    return _validated(ExportRecord, data, str(path), fix)


def _model_names(model: type[BaseModel]) -> set[str]:
    return {model.__name__}.union(*(_model_names(sub) for sub in model.__subclasses__()))


_UNION_TAGS = _model_names(_Open) | {"str"}  # a union's errors name the member tried: not a field
