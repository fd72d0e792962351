"""The `eikd-edge` command: thin Typer commands; EikdError becomes one line and an exit code here only.

Nothing here (nor in the command modules' top levels) imports torch, onnxruntime or numpy: `--help`, `--version`
and a mistyped command line answer in a fraction of a second; each command imports what it needs when it runs.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click
    from typer._click.core import Command, Context
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer with click installed
    from click.core import Command, Context
    from click.exceptions import ClickException, UsageError

from eikd_edge import __version__
from eikd_edge.commands import register_all
from eikd_edge.commands.help_format import plain_help, plain_param
from eikd_edge.console import console, err_console
from eikd_edge.errors import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_USER_ERROR, EikdError


class _ErrorsToExitCodes(TyperGroup):
    """Every user error ends as one red line and its exit code; `--debug` shows the traceback instead."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Usage errors (a typo, a missing option) in the same one-line `error:` style as every other error,
        instead of Typer's boxed panel."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ != "NoArgsIsHelpError":  # bare `eikd-edge`: the help was printed
                err_console.print(f"[bold red]error:[/] {escape(_usage_message(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            plain_help(command, ctx)
            plain_param(command.get_help_option(ctx), ctx)
        return command

    def get_help_option(self, ctx: Context) -> Any:
        plain_help(self, ctx)
        option = super().get_help_option(ctx)
        plain_param(option, ctx)
        return option

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


def _usage_message(exc: ClickException) -> str:
    """Click's message plus where to look: `No such option: --epoch (see: eikd-edge distill --help)`."""
    message = exc.format_message().strip().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is None or not isinstance(exc, UsageError):
        return message
    return f"{message} (see: {ctx.command_path} --help)"


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
    app(prog_name="eikd-edge")
