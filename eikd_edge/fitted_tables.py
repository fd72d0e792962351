"""Tables that fit the terminal without losing a column: when a table is wider than the console, its columns are
stacked into several narrower tables, each repeating the key columns (artifact, batch, ...) so every row can still
be read. Cells are never truncated and no column is dropped."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def fitted_tables(
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[str]],
    console: Console,
    keys: int = 1,
) -> list[Table]:
    """One table when it fits `console.width`, else the same rows split by columns into tables that do; the first
    `keys` columns appear in every part. Columns are (name, justify); cells are Rich markup."""
    whole = _table(columns, rows, range(len(columns)))
    if _width(console, whole) <= console.width or len(columns) <= keys + 1:
        return [whole]
    parts: list[list[int]] = []
    current: list[int] = []
    for index in range(keys, len(columns)):
        trial = [*range(keys), *current, index]
        if current and _width(console, _table(columns, rows, trial)) > console.width:
            parts.append(current)
            current = []
        current.append(index)
    parts.append(current)
    return [_table(columns, rows, [*range(keys), *part]) for part in parts]


def print_fitted(
    title: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[str]],
    console: Console,
    keys: int = 1,
) -> None:
    """The title on a line of its own (a centred title would wrap over a narrow table), then the table(s)."""
    if title:
        console.print(f"[bold]{title}[/]", highlight=False)
    for table in fitted_tables(columns, rows, console, keys):
        console.print(table)


def _table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]], keep: Sequence[int]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for index in keep:
        name, justify = columns[index]
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*(row[index] for index in keep))
    return table


def _width(console: Console, table: Table) -> int:
    return Measurement.get(console, console.options.update_width(10_000), table).maximum
