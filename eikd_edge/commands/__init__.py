"""CLI commands, one module each; `register_all` adds them to the Typer app in a fixed order."""

from __future__ import annotations

import typer

__all__ = ["register_all"]


def register_all(app: typer.Typer) -> None:
    from eikd_edge.commands import (
        bench_cmd,
        distill_cmd,
        export_cmd,
        inspect_cmd,
        models_cmd,
        report_cmd,
        select_cmd,
        synthesize_cmd,
        validate_cmd,
    )

    for module in (
        select_cmd,
        distill_cmd,
        synthesize_cmd,
        export_cmd,
        validate_cmd,
        bench_cmd,
        report_cmd,
        models_cmd,
        inspect_cmd,
    ):
        module.register(app)
