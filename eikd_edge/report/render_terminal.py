"""Rich tables for the terminal: the report's headline numbers and the bench table, from the shared TextTables."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from eikd_edge.bench import BenchResult
from eikd_edge.report import tables
from eikd_edge.report.model import Report
from eikd_edge.report.tables import TextTable

STATUS_STYLE = {"ok": "green", "ok*": "yellow", "pass": "green", "reference": "dim"}


def rich_table(table: TextTable, console: Console | None = None) -> Table:
    """A Rich table; on a console too narrow for it, the table's optional columns are dropped, one at a time."""
    keep = list(table.columns)
    for drop in (None, *table.optional):
        if drop is not None:
            keep.remove(drop)
        title, caption = escape(table.title), escape(table.caption) if table.caption else None
        out = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
        for column in keep:
            out.add_column(column, justify="left" if column in table.left else "right", overflow="fold")
        index = [table.columns.index(c) for c in keep]
        for row in table.rows:
            out.add_row(*(_style(row[i]) for i in index))
        if (
            console is None
            or Measurement.get(console, console.options.update_width(10_000), out).maximum <= console.width
        ):
            break
    return out


def _style(cell: str) -> str:
    cell = escape(cell)  # class and file names are text: `[/]` or `[link=...]` in one is printed as written
    if cell.startswith(("FAIL", "failed")):
        return f"[red]{cell}[/]"
    if cell.startswith("skipped"):
        return f"[dim]{cell}[/]"
    head = cell.split(" ")[0]
    return f"[{STATUS_STYLE[head]}]{cell}[/]" if head in STATUS_STYLE else cell


def print_table(table: TextTable, console: Console) -> None:
    console.print(rich_table(table, console))
    for note in table.notes:
        console.print(f"  {note}", highlight=False, markup=False)


def print_bench(result: BenchResult, console: Console) -> None:
    print_table(tables.bench(result), console)


def print_report(report: Report, console: Console) -> None:
    """The same headline numbers as report.md/html: sizes, speed-ups, agreement and gate verdicts."""
    for table in (tables.compression(report), tables.speed(report), tables.quality(report)):
        if table.rows:
            print_table(table, console)
    if report.novel is not None:
        console.print(f"[cyan]novel:[/] {escape(tables.novel_summary(report))}", highlight=False)
    if report.selection and report.selection.below_quota:
        names = escape(", ".join(report.selection.below_quota))
        console.print(f"[yellow]classes below quota:[/] {names}", highlight=False)
    if report.headline.validation_passed is not None:
        verdict = "[green]passed[/]" if report.headline.validation_passed else "[red]failed[/]"
        console.print(f"validation: {verdict}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
