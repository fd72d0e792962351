"""RUN/export/export.json: one entry per artifact, merged across calls (export, then validate), written atomically."""

from __future__ import annotations

import json
from typing import Any

from eikd_edge import __version__
from eikd_edge.atomic import write_json_atomic
from eikd_edge.errors import EikdError
from eikd_edge.run import RunPaths


def read_record(run: RunPaths) -> dict[str, Any]:
    """The current export.json, or an empty skeleton when nothing was exported yet."""
    path = run.export_record
    if not path.is_file():
        return {"artifacts": {}, "target": None, "created_with": __version__}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EikdError(f"cannot read {path}: {exc}; delete it and export again") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
        raise EikdError(f"{path} is not an eikd-edge export record; delete it and export again")
    return data


def merge_record(
    run: RunPaths,
    replace: dict[str, dict[str, Any]] | None = None,
    update: dict[str, dict[str, Any]] | None = None,
    top: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Replace whole entries (a fresh build), update fields of existing ones (new parity), set top-level keys."""
    data = read_record(run)
    artifacts: dict[str, Any] = data["artifacts"]
    for name, entry in (replace or {}).items():
        artifacts[name] = entry
    for name, fields in (update or {}).items():
        artifacts.setdefault(name, {}).update(fields)
    for key, value in (top or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    data["created_with"] = __version__
    write_json_atomic(run.export_record, data)
    return data


def status_for(parity: dict[str, Any] | None) -> str:
    return "ok" if parity is None or parity.get("passed") else "failed_gate"
