"""selection.json as read back by export, validate and report: every field those commands use, type-checked.

The file may have been edited by hand or come from a shared drive; a wrong type (`"pool": []`,
`"candidates": "many"`) is one clear error naming the field, not a crash deep inside a command.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from eikd_edge.errors import EikdError
from eikd_edge.run import RunPaths, read_json


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # newer or older files may carry more fields: left alone


class _Pool(_Open):
    root: str | None = None
    files: int | None = None
    decoded: int | None = None
    skipped: dict[str, Any] | None = None


class _ClassRow(_Open):
    name: str
    candidates: int | None = None
    quota: int | None = None
    selected: int | None = None
    deficit: int | None = None


class _Entry(_Open):
    path: str
    predicted: str | None = None
    confidence: float | None = None
    score: float | None = None
    selected: bool | None = None
    split: str | None = None


class _Selection(_Open):
    pool: _Pool | None = None
    manifest: list[_Entry] | None = None
    classes: list[_ClassRow | str] | None = None
    classes_below_quota: list[str] | None = None
    selected_count: int | None = None
    train_count: int | None = None
    holdout_count: int | None = None


def read_selection(run: RunPaths) -> dict[str, Any]:
    """selection.json as a dict whose fields have the types eikd-edge writes; EikdError naming the first that
    does not."""
    data = read_json(run.selection, "selection manifest")
    try:
        _Selection.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if not str(part).startswith("_"))  # no model names
        message = re.sub(r" or instance of \w+", "", str(error["msg"]))
        raise EikdError(
            f"{run.selection}: {where}: {message}; the file was edited or damaged: re-run `eikd-edge select`/`distill`"
        ) from None
    return data
