"""The run report: `model.build_report` gathers one Report object; the render_* modules only present it."""

from eikd_edge.report.model import Report, build_report, write_report

__all__ = ["Report", "build_report", "write_report"]
