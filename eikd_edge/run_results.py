"""What a run folder already knows about each model's quality, merged in one place so bench and report agree:
export.json parity first, then validate.json, then the training-time numbers in metrics.json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from eikd_edge.errors import EikdError
from eikd_edge.run import RunPaths
from eikd_edge.run_files import (
    AgreementFigures,
    MetricsFile,
    RunFile,
    StudentCheck,
    StudentFigures,
    TeacherCheck,
    TeacherFigures,
    ValidationFile,
    read_export,
    read_metrics,
    read_validation,
)

File = TypeVar("File", bound=RunFile)


def first(*values: Any) -> Any:
    """The first value that is not None: a later source fills in only what an earlier one lacks."""
    return next((v for v in values if v is not None), None)


def optional_file(read: Callable[[RunPaths], File], run: RunPaths) -> File | None:
    """A run file, or None when it is missing or unreadable (an optional stage that did not run)."""
    try:
        return read(run)
    except EikdError:
        return None


def model_quality(run: RunPaths) -> dict[str, dict[str, Any]]:
    """Per model ("teacher", "pytorch", each artifact): agreement, top-1, gate, gate_passed and status."""
    validated = optional_file(read_validation, run) or ValidationFile()
    metrics = optional_file(read_metrics, run) or MetricsFile()
    checked = validated.artifacts or {}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in read_export(run).artifacts.items():
        check = checked.get(name)
        parity = entry.parity or (check.parity if check else None) or {}
        out[name] = {
            "agree_teacher": parity.get("agree_teacher"),
            "agree_student": parity.get("agree_student"),
            "top1": parity.get("top1"),
            "gate": parity.get("gate"),
            "gate_passed": parity.get("passed"),
            "status": first(check.status if check else None, entry.status),
        }
    student = validated.student or StudentCheck()
    out["pytorch"] = {
        "agree_teacher": first(student.agree_teacher, (metrics.agreement or AgreementFigures()).top1),
        "agree_student": 1.0,
        "top1": first(student.top1, (metrics.student or StudentFigures()).top1),
        "status": "reference",
    }
    out["teacher"] = {
        "agree_teacher": 1.0,
        "top1": first((validated.teacher or TeacherCheck()).top1, (metrics.teacher or TeacherFigures()).top1),
        "status": "reference",
    }
    return out
