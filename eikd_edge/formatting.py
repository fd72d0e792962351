"""Shares printed as percentages one way everywhere (terminal summaries, tables, the report), so a figure reads
the same wherever it appears. Imports nothing heavy: the command modules use it at import time."""

from __future__ import annotations

MISSING = "-"


def pct(value: float | None, nan_is_missing: bool = False) -> str:
    """0.9876 -> "98.8%"; "-" when not measured. `nan_is_missing`: for figures that hold NaN when nothing could be
    measured (top-1 on an empty --val), which then show "-" rather than "nan%"."""
    if value is None or (nan_is_missing and value != value):
        return MISSING
    return f"{value:.1%}"
