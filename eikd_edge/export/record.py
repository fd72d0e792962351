"""RUN/export/export.json: one entry per artifact, merged across calls (export, then validate), written atomically."""

from __future__ import annotations

from typing import Any

from eikd_edge import __version__
from eikd_edge.atomic import write_json_atomic
from eikd_edge.run import RunPaths
from eikd_edge.run_files import read_export
from eikd_edge.status import ArtifactStatus, gate_status


def read_record(run: RunPaths) -> dict[str, Any]:
    """The current export.json as a dict to merge into and write back (checked by run_files.read_export), or an
    empty skeleton when nothing was exported yet."""
    return read_export(run).as_json


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


def status_for(parity: dict[str, Any] | None) -> ArtifactStatus:
    return gate_status(parity is None or bool(parity.get("passed")))
