"""Number formatting shared by every renderer, so the terminal, Markdown and HTML print identical figures."""

from __future__ import annotations

from eikd_edge.ui import human
from eikd_edge.ui import pct as pct  # the renderers call t.pct

DASH = "-"


def ms(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def count(value: float | None) -> str:
    return DASH if value is None else human(value)


def size(value: int | None) -> str:
    return DASH if value is None else f"{human(value)}B"


def times(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}×"


def rate(value: float | None) -> str:
    return DASH if value is None else f"{value:,.0f}"


def verdict(passed: bool | None) -> str:
    return DASH if passed is None else "pass" if passed else "FAIL"


def seconds(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f} s"
