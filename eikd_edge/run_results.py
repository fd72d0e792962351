"""What a run folder already knows about each model's quality, merged in one place so bench and report agree:
export.json parity first, then validate.json, then the training-time numbers in metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eikd_edge.errors import EikdError
from eikd_edge.export.record import read_record
from eikd_edge.run import RunPaths, read_json


def first(*values: Any) -> Any:
    """The first value that is not None: a later source fills in only what an earlier one lacks."""
    return next((v for v in values if v is not None), None)


def optional_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} when the file is missing or unreadable (an optional stage that did not run)."""
    try:
        return read_json(path, path.name) if path.is_file() else {}
    except EikdError:
        return {}


def model_quality(run: RunPaths) -> dict[str, dict[str, Any]]:
    """Per model ("teacher", "pytorch", each artifact): agreement, top-1, gate, gate_passed and status."""
    validated = optional_json(run.validation)
    metrics = optional_json(run.metrics)
    checked = validated.get("artifacts") or {}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in read_record(run)["artifacts"].items():
        check = checked.get(name) or {}
        parity = entry.get("parity") or check.get("parity") or {}
        out[name] = {
            "agree_teacher": parity.get("agree_teacher"),
            "agree_student": parity.get("agree_student"),
            "top1": parity.get("top1"),
            "gate": parity.get("gate"),
            "gate_passed": parity.get("passed"),
            "status": first(check.get("status"), entry.get("status")),
        }
    student = validated.get("student") or {}
    out["pytorch"] = {
        "agree_teacher": first(student.get("agree_teacher"), (metrics.get("agreement") or {}).get("top1")),
        "agree_student": 1.0,
        "top1": first(student.get("top1"), (metrics.get("student") or {}).get("top1")),
        "status": "reference",
    }
    out["teacher"] = {
        "agree_teacher": 1.0,
        "top1": first((validated.get("teacher") or {}).get("top1"), (metrics.get("teacher") or {}).get("top1")),
        "status": "reference",
    }
    return out
