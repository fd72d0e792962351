"""The run report: `build_report` gathers one Report object; the render_* modules only present it."""

from __future__ import annotations

from pathlib import Path

from eikd_edge.atomic import write_json_atomic, write_text_atomic
from eikd_edge.data import display_name
from eikd_edge.report.build import build_report
from eikd_edge.report.model import Report
from eikd_edge.run import RunPaths

__all__ = ["Report", "build_report", "write_report"]


def write_report(report: Report, run: RunPaths) -> list[Path]:
    """report.json (Report.model_dump), report.md and report.html, each written atomically.

    Folder names that are not valid UTF-8 (possible on Linux) appear with their odd bytes escaped (\\xff), as in
    selection.json, so the text files stay valid UTF-8.
    """
    from eikd_edge.report.render_html import render_html
    from eikd_edge.report.render_markdown import render_markdown

    json_path, markdown_path, html_path = run.reports
    return [
        write_json_atomic(json_path, report.model_dump(mode="json")),
        write_text_atomic(markdown_path, display_name(render_markdown(report))),
        write_text_atomic(html_path, display_name(render_html(report))),
    ]
