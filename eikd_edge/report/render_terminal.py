"""The report's headline numbers in the terminal, from the same TextTables as report.md/html."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from eikd_edge.fitted_tables import print_fitted
from eikd_edge.report import summaries, tables
from eikd_edge.report.model import Report
from eikd_edge.report.tables import TextTable

STATUS_STYLE = {"ok": "green", "ok*": "yellow", "pass": "green", "reference": "dim"}


def _style(cell: str) -> str:
    cell = escape(cell)  # class and file names are text: `[/]` or `[link=...]` in one is printed as written
    if cell.startswith(("FAIL", "failed")):
        return f"[red]{cell}[/]"
    if cell.startswith("skipped"):
        return f"[dim]{cell}[/]"
    head = cell.split(" ")[0]
    return f"[{STATUS_STYLE[head]}]{cell}[/]" if head in STATUS_STYLE else cell


def print_table(table: TextTable, console: Console) -> None:
    """Stacked into narrower tables on a narrow terminal (never a column dropped), then caption and notes."""
    columns = [(c, "left" if c in table.left else "right") for c in table.columns]
    rows = [[_style(cell) for cell in row] for row in table.rows]
    print_fitted(escape(table.title), columns, rows, console)
    if table.caption:
        console.print(table.caption, highlight=False, markup=False)
    for note in table.notes:
        console.print(f"  {note}", highlight=False, markup=False)


def print_report(report: Report, console: Console) -> None:
    """The same headline numbers as report.md/html: sizes, speed-ups, agreement and gate verdicts."""
    for table in (tables.compression(report), tables.speed(report), tables.quality(report)):
        if table.rows:
            print_table(table, console)
    if report.novel is not None:
        console.print(f"[cyan]novel:[/] {escape(summaries.novel_summary(report))}", highlight=False)
    if report.selection and report.selection.below_quota:
        names = escape(", ".join(report.selection.below_quota))
        console.print(f"[yellow]classes below quota:[/] {names}", highlight=False)
    if report.headline.validation_passed is not None:
        verdict = "[green]passed[/]" if report.headline.validation_passed else "[red]failed[/]"
        console.print(f"validation: {verdict}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
