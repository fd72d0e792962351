"""The `eikd-edge` command: thin Typer commands; EikdError becomes one line and an exit code here only."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import typer
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer with click installed
    from click.exceptions import ClickException, UsageError

from eikd_edge import __version__
from eikd_edge.commands import register_all
from eikd_edge.console import console, err_console
from eikd_edge.errors import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_USER_ERROR, EikdError


class _ErrorsToExitCodes(TyperGroup):
    """Every user error ends as one red line and its exit code; `--debug` shows the traceback instead."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UsageError as exc:
            exc.exit_code = EXIT_USER_ERROR  # a mistyped command line is a user error, not a failed gate (2)
            raise

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            exc.exit_code = EXIT_USER_ERROR
            raise
        except EikdError as exc:
            if os.environ.get("EIKD_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (ClickException, typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if os.environ.get("EIKD_DEBUG"):
                raise
            err_console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(_first_line(exc))} "
                "(a bug in eikd-edge: re-run with --debug for the traceback and report it)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_CRASH) from None


app = typer.Typer(
    name="eikd-edge",
    cls=_ErrorsToExitCodes,
    help="Distil a compact edge student from a teacher and unlabeled field images, export it, prove it behaves.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        console.print(f"eikd-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    if debug:
        os.environ["EIKD_DEBUG"] = "1"


register_all(app)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text.strip() else ""


_FONT_NOTE = "the plots' font lacks some characters of the class names: they show as boxes in the report's plots"
_shown: set[str] = set()


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: object = None,
) -> None:
    """A library warning as one note in the tool's voice: the library's name, the first line, no source path."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    # matplotlib warns once per missing glyph: one note says it all
    text = _FONT_NOTE if "missing from font" in text else f"{_library(filename)}: {text}"
    if text in _shown:
        return
    _shown.add(text)
    err_console.print(f"[yellow]note:[/] {escape(text)}", highlight=False, soft_wrap=True)


def _library(filename: str) -> str:
    """The top-level package that warned (`torch`, `matplotlib`, ...), from the file's path."""
    parts = Path(filename).parts
    if "site-packages" in parts and parts.index("site-packages") + 1 < len(parts):
        return Path(parts[parts.index("site-packages") + 1]).stem
    return "eikd-edge" if "eikd_edge" in parts else Path(filename).stem


def quiet_library_warnings() -> None:
    """Deprecation notices speak to the developers of the libraries, not to users: dropped. Anything else a
    library warns about reaches the terminal once, as one line (see _show_warning)."""
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.showwarning = _show_warning


def main() -> None:
    """Entry for `python -m eikd_edge` and `torchrun -m eikd_edge`."""
    quiet_library_warnings()
    app()
