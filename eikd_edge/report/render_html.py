"""report.html: one self-contained page (inline CSS, plots as inline SVG, no script, no external URL), so it can be
mailed, archived or opened on an air-gapped machine, and its plots stay sharp at any zoom."""

from __future__ import annotations

from html import escape

from eikd_edge.report import bench_table, summaries, tables
from eikd_edge.report.model import Report
from eikd_edge.report.tables import TextTable

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1180px;padding:0 20px 40px;
color:#1b1f23}
h1{font-size:22px;margin:18px 0 4px}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}nav a{margin-right:12px}.meta{color:#57606a}
table{border-collapse:collapse;margin:6px 0;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;border-bottom:1px solid #eaeef2;text-align:right;white-space:nowrap}
th{background:#f6f8fa}td.l,th.l{text-align:left}caption{caption-side:bottom;color:#57606a;font-size:12px;
text-align:left;padding-top:4px}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.skip{color:#8c959f}
.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}figure{margin:10px 0}
figure svg{display:block;max-width:100%;height:auto;border:1px solid #eaeef2}.wide{max-width:100%;overflow-x:auto}
figcaption{color:#57606a;font-size:12px}.note{background:#fff8c5;padding:6px 10px;margin:4px 0;border-radius:4px}
.empty{color:#8c959f;font-style:italic}
"""


def html_table(table: TextTable) -> str:
    if not table.rows:
        return f'<h3>{escape(table.title)}</h3><p class="empty">none</p>'
    head = "".join(f"<th{_cls(c, table)}>{escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td{_cls(c, table, cell)}>{escape(cell)}</td>" for c, cell in zip(table.columns, row, strict=True))
        + "</tr>"
        for row in table.rows
    )
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    notes = "".join(f"<li>{escape(n)}</li>" for n in table.notes)
    return (
        f'<h3>{escape(table.title)}</h3><div class="wide"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>" + (f'<ul class="notes">{notes}</ul>' if notes else "")
    )


def _cls(column: str, table: TextTable, cell: str = "") -> str:
    classes = ["l"] if column in table.left else []
    if cell.startswith(("pass", "ok")):
        classes.append("pass")
    elif cell.startswith(("FAIL", "failed")):
        classes.append("fail")
    elif cell.startswith("skipped"):
        classes.append("skip")
    return f' class="{" ".join(classes)}"' if classes else ""


def figure(caption: str, svg: str) -> str:
    """An inline SVG plot; its caption doubles as the accessible name."""
    return f'<figure role="img" aria-label="{escape(caption)}">{svg}<figcaption>{escape(caption)}</figcaption></figure>'


def _para(text: str) -> str:
    return f"<p>{escape(text)}</p>"


def render_html(report: Report) -> str:
    """The whole page; figures are drawn here (rendering), from data the Report already holds (building)."""
    from eikd_edge.report import plots  # matplotlib: imported only when a page is drawn

    figs: dict[str, list[str]] = {}
    for index, (section, caption, fig) in enumerate(plots.figures(report)):
        figs.setdefault(section, []).append(figure(caption, plots.svg(fig, salt=f"figure{index}")))
    s = report.sections
    body = {
        "headline": [
            html_table(tables.compression(report)),
            html_table(tables.speed(report)),
            html_table(tables.quality(report)),
            _para(summaries.verdict_line(report)),
        ],
        "selection": [_para(summaries.selection_summary(report)), html_table(tables.selection_classes(report))],
        "novel": [
            _para(summaries.novel_summary(report)),
            html_table(tables.novel_clusters(report)),
            *_novel_empty(report, figs),
        ],
        "training": [_para(summaries.training_summary(report)), html_table(tables.history(report))],
        "validation": [html_table(tables.validation(report)) if report.validation else _empty("not validated")],
        "benchmark": [html_table(bench_table.run_bench(report)) if report.bench else _empty("not benchmarked")],
        "confusion": [_para(line) for line in summaries.confusion_summary(report)] or [_empty("not computed")],
        "images": [] if figs.get("images") else [_empty("no field images available")],
    }
    sections = "".join(
        f'<section id="{key}"><h2>{escape(title)}</h2>{"".join(body[key])}'
        f'<div class="figs">{"".join(figs.get(key, []))}</div></section>'
        for key, title in s.items()
    )
    notes = "".join(f'<div class="note">{escape(n)}</div>' for n in report.notes)
    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title in s.items())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>eikd-edge report: {escape(report.run)}</title><style>{CSS}</style></head>"
        f"<body><h1>eikd-edge report</h1>"
        f'<p class="meta">{escape(report.run)} · eikd-edge {escape(report.created_with)} · '
        f"{escape(report.created_at)}</p><nav>{nav}</nav>{sections}"
        f"{f'<section id=notes><h2>Notes</h2>{notes}</section>' if notes else ''}"
        "</body></html>\n"
    )


def _empty(text: str) -> str:
    return f'<p class="empty">{escape(text)}</p>'


def _novel_empty(report: Report, figs: dict[str, list[str]]) -> list[str]:
    """Clusters whose example images all failed to load (the pool moved) say so instead of showing nothing."""
    if figs.get("novel") or not (report.novel and report.novel.clusters):
        return []
    return [_empty("no novel-sample images available")]
