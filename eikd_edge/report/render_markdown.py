"""report.md: the report's tables as GitHub-flavoured Markdown (plots live in report.html)."""

from __future__ import annotations

from eikd_edge.report import bench_table, summaries, tables
from eikd_edge.report.model import Report
from eikd_edge.report.tables import TextTable


def md_table(table: TextTable, level: int = 3) -> str:
    if not table.rows:
        return f"{'#' * level} {table.title}\n\n_none_\n"

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = tuple(":---" if c in table.left else "---:" for c in table.columns)
    parts = [f"{'#' * level} {table.title}", "", line(table.columns), line(align), *(line(r) for r in table.rows)]
    if table.caption:
        parts += ["", f"_{table.caption}_"]
    if table.notes:
        parts += ["", *(f"- {note}" for note in table.notes)]
    return "\n".join(parts) + "\n"


def render_markdown(report: Report) -> str:
    s = report.sections
    out = [
        f"# eikd-edge report: {report.run}",
        "",
        f"eikd-edge {report.created_with}, {report.created_at}. Plots: report.html (self-contained, opens offline).",
        "",
        f"## {s['headline']}",
        "",
        md_table(tables.compression(report)),
        md_table(tables.speed(report)),
        md_table(tables.quality(report)),
        summaries.verdict_line(report) + "\n",
        f"## {s['selection']}",
        "",
        summaries.selection_summary(report) + "\n",
        md_table(tables.selection_classes(report)),
        *(_novel_text(report) if "novel" in s else []),
        f"## {s['training']}",
        "",
        summaries.training_summary(report) + "\n",
        md_table(tables.history(report)),
        f"## {s['validation']}",
        "",
        md_table(tables.validation(report)) if report.validation else "_not validated_\n",
        f"## {s['benchmark']}",
        "",
        md_table(bench_table.run_bench(report)) if report.bench else "_not benchmarked_\n",
        f"## {s['confusion']}",
        "",
        "".join(f"- {line}\n" for line in summaries.confusion_summary(report)) or "_not computed_\n",
        f"## {s['images']}",
        "",
        _images_text(report),
    ]
    if report.notes:
        out += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    return "\n".join(out)


def _images_text(report: Report) -> str:
    if report.selection is None or not report.selection.thumbnails:
        return "_none_\n"
    groups: dict[str, list[str]] = {}
    for th in report.selection.thumbnails:
        conf = "" if th.confidence is None else f", teacher confidence {th.confidence:.2f}"
        groups.setdefault(th.group, []).append(f"`{th.path}` (class {th.predicted}{conf})")
    return "\n".join(f"- {g.replace('_', ' ')}: {', '.join(items)}" for g, items in groups.items()) + "\n"


def _novel_text(report: Report) -> list[str]:
    examples = "".join(
        f"- cluster {c.id} (nearest {c.nearest_class}): {', '.join(f'`{p}`' for p in c.examples) or '_none_'}\n"
        for c in (report.novel.clusters if report.novel else [])
    )
    return [
        f"## {report.sections['novel']}",
        "",
        summaries.novel_summary(report) + "\n",
        md_table(tables.novel_clusters(report)),
        *([examples] if examples else []),
    ]
