"""`eikd-edge report RUN`: selection, training, validation and bench results in report.json, .md and .html."""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer
from rich.markup import escape

from eikd_edge.commands.options import RunFolder, TrustPickle
from eikd_edge.console import console, err_console
from eikd_edge.run import RunPaths
from eikd_edge.runfolder import writing_run


def report(
    run: RunFolder,
    open_: Annotated[bool, typer.Option("--open", help="Open report.html in the default browser.")] = False,
    confusion: Annotated[
        bool,
        typer.Option("--confusion/--no-confusion", help="Run the student and the teacher for confusion matrices."),
    ] = True,
    trust_pickle: TrustPickle = False,
) -> None:
    """Gather the run into one report; the terminal shows the headline numbers."""
    from eikd_edge.report import build_report, write_report
    from eikd_edge.report.render_terminal import print_report

    paths = RunPaths(run)
    with writing_run(run, "report"):
        result = build_report(paths, confusion=confusion, trust_pickle=trust_pickle)
        written = write_report(result, paths)
    print_report(result, console)
    console.print(escape(f"written: {', '.join(str(p) for p in written)}"), highlight=False)
    if open_ and not webbrowser.open(written[-1].resolve().as_uri()):
        err_console.print(
            f"[yellow]note:[/] no browser found; open {escape(str(written[-1]))} yourself", highlight=False
        )


def register(app: typer.Typer) -> None:
    app.command("report")(report)
