"""`eikd-edge bench RUN`: latency and throughput of every artifact per backend and batch size, into bench.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from eikd_edge.bench import BACKENDS, BenchOptions, bench_run
from eikd_edge.commands.options import RunFolder, TrustPickle
from eikd_edge.console import console
from eikd_edge.errors import EikdError
from eikd_edge.run import RunPaths
from eikd_edge.runfolder import writing_run


def bench(
    run: RunFolder,
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,8,32",
    backends: Annotated[
        str, typer.Option("--backends", help=f"Comma-separated, from {','.join(BACKENDS)}.")
    ] = ",".join(BACKENDS),
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.")] = 20,
    iters: Annotated[int, typer.Option("--iters", help="Timed calls per backend and batch size.")] = 200,
    threads: Annotated[
        int, typer.Option("--threads", help="CPU threads for torch and ONNX Runtime (0 = library default).")
    ] = 0,
    budget_s: Annotated[
        float,
        typer.Option(
            "--budget-s", help="Seconds per backend and batch size (warm-up included); stops iterating early."
        ),
    ] = 30.0,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    teacher: Annotated[
        bool, typer.Option("--teacher/--no-teacher", help="Also time the teacher, for reference.")
    ] = True,
    images: Annotated[
        Path | None, typer.Option("--images", help="Field images to time on (default: the run's holdout slice).")
    ] = None,
    trust_pickle: TrustPickle = False,
) -> None:
    """Time every artifact on real field images (host to host: uint8 in, logits out); writes RUN/bench.json."""
    from eikd_edge.report.render_terminal import print_bench

    options = BenchOptions(
        batches=_ints(batch, "--batch"),
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
        warmup=warmup,
        iters=iters,
        budget_s=budget_s,
        threads=threads,
        device=device,
        teacher=teacher,
        images=images,
        trust_pickle=trust_pickle,
    )
    with writing_run(run, "bench"):
        result = bench_run(RunPaths(run), options)
    print_bench(result, console)
    console.print(escape(f"written: {run / 'bench.json'}"), highlight=False)


def _ints(value: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise EikdError(f"{option} takes comma-separated integers, e.g. 1,8,32; got {value!r}") from None


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
