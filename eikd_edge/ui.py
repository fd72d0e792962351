"""What the terminal shows, one way everywhere: shares as percentages, counts with a unit, progress bars.

Imports nothing heavy (no torch, and Rich's progress only when a bar is made): the command modules use it at import
time, and `--help` must stay fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress

MISSING = "-"


def pct(value: float | None, nan_is_missing: bool = False) -> str:
    """0.9876 -> "98.8%"; "-" when not measured. `nan_is_missing`: for figures that hold NaN when nothing could be
    measured (top-1 on an empty --val), which then show "-" rather than "nan%"."""
    if value is None or (nan_is_missing and value != value):
        return MISSING
    return f"{value:.1%}"


def human(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def progress_bar(disable: bool = False) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=disable,
        transient=False,
    )


def show_progress(is_main: bool = True) -> bool:
    """Bars only on rank 0 (one per run, not one per GPU) and never with EIKD_NO_PROGRESS set: a bar redraws in
    place, which in a log file leaves every frame."""
    return is_main and not os.environ.get("EIKD_NO_PROGRESS")
