"""`eikd-edge bench RUN`: latency and throughput of every artifact per backend and batch size, into bench.json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from eikd_edge.commands.options import Device, RunFolder, Threads, TrustPickle, resolve_threads
from eikd_edge.console import console
from eikd_edge.errors import EikdError
from eikd_edge.fitted_tables import print_fitted
from eikd_edge.formats import BENCH_NAMES

if TYPE_CHECKING:
    from eikd_edge.bench_result import BenchResult

BACKENDS = BENCH_NAMES  # as eikd_edge.bench.BACKENDS, from the light formats table (`--help` imports no torch)


def bench(
    run: RunFolder,
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,8,32",
    backends: Annotated[
        str, typer.Option("--backends", help=f"Comma-separated, from {','.join(BACKENDS)}.")
    ] = ",".join(BACKENDS),
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.")] = 20,
    iters: Annotated[int, typer.Option("--iters", help="Timed calls per backend and batch size.")] = 200,
    threads: Threads = 0,
    budget_s: Annotated[
        float,
        typer.Option(
            "--budget-s", help="Seconds per backend and batch size (warm-up included); stops iterating early."
        ),
    ] = 30.0,
    device: Device = None,
    with_teacher: Annotated[
        bool, typer.Option("--with-teacher/--without-teacher", help="Also time the run's teacher, for reference.")
    ] = True,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Field images to time on.", show_default="the run's holdout slice"),
    ] = None,
    trust_pickle: TrustPickle = False,
) -> None:
    """Time every artifact on real field images (host to host: uint8 in, logits out); writes RUN/bench.json."""
    from eikd_edge.bench import BenchOptions, bench_run
    from eikd_edge.run import RunPaths
    from eikd_edge.runfolder import writing_run

    options = BenchOptions(
        batches=_ints(batch, "--batch"),
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
        warmup=warmup,
        iters=iters,
        budget_s=budget_s,
        threads=resolve_threads(threads),
        device=device or "auto",
        teacher=with_teacher,
        images=images,
        trust_pickle=trust_pickle,
    )
    with writing_run(run, "bench"):
        result = bench_run(RunPaths(run), options)
    _print(result)
    console.print(escape(f"written: {RunPaths(run).bench}"), highlight=False)


def _print(result: BenchResult) -> None:
    """The bench table at any terminal width: stacked into parts when too wide, no column dropped."""
    from eikd_edge.report import bench_table

    table = bench_table.bench(result)
    rows = [tuple(_style(cell) for cell in row) for row in table.rows]
    columns = [(c, "left" if c in table.left else "right") for c in table.columns]
    print_fitted(escape(table.title), columns, rows, console, keys=_KEYS)
    console.print(escape(table.caption), highlight=False)
    for note in table.notes:
        console.print(f"  {escape(note)}", highlight=False)


_KEYS = 4  # backend, model, precision, batch: which row a cell belongs to, repeated in every stacked part


def _style(cell: str) -> str:
    text = escape(cell)
    if cell.startswith(("FAIL", "failed")):
        return f"[red]{text}[/]"
    if cell.startswith("skipped"):
        return f"[dim]{text}[/]"
    return f"[green]{text}[/]" if cell == "ok" else text


def _ints(value: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise EikdError(f"{option} takes comma-separated integers, e.g. 1,8,32; got {value!r}") from None


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
