"""What the terminal shows, one way everywhere: shares as percentages, counts with a unit, progress bars.

Imports nothing heavy (no torch, and Rich's progress only when a bar is made): the command modules use it at import
time, and `--help` must stay fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rich.markup import escape

from eikd_edge.status import ArtifactStatus

if TYPE_CHECKING:
    from rich.progress import Progress

MISSING = "-"

# How an artifact's status reads in the export and validate tables: (label, Rich style).
STATUS_STYLE: dict[str, tuple[str, str]] = {
    ArtifactStatus.OK: ("ok", "green"),
    ArtifactStatus.FAILED_GATE: ("failed gate", "red"),
    ArtifactStatus.FAILED: ("failed", "red"),
    ArtifactStatus.ON_DEVICE: ("on device", "cyan"),
    ArtifactStatus.SKIPPED: ("skipped", "dim"),
}
EXPORT_GATE_STYLE = "yellow"  # export: the artifact is written and may pass `validate` on more images; a warning


def status_markup(status: str, gate_style: str | None = None) -> str:
    """Rich markup of an artifact status ("failed_gate" -> "[red]failed gate[/]"); `gate_style` overrides the style
    of failed_gate; a status of no table entry shows as itself, dim."""
    label, style = STATUS_STYLE.get(status, (status, "dim"))
    if gate_style and status == ArtifactStatus.FAILED_GATE:
        style = gate_style
    return f"[{style}]{escape(label)}[/]"


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
