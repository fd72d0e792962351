"""Shared Rich consoles: results to stdout, diagnostics to stderr."""

from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape
from rich.segment import Segment


class _Console(Console):
    """A Console that never fails on file names that are not valid UTF-8 (possible on Linux): their odd bytes
    are printed escaped (caf\\xe9), as in the JSON files, instead of raising UnicodeEncodeError mid-output."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        text = super()._render_buffer(buffer)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            try:
                text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:  # a lone surrogate that is not an undecodable byte
                text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text


console = _Console()
err_console = _Console(stderr=True)


def print_command(label: str, command: str, out: Console | None = None) -> None:
    """A command the user will copy, on one line that is never wrapped (a terminal folds it if it must, which
    copies back as one line; Rich's wrapping would insert a newline mid-command)."""
    (out or console).print(f"{escape(label)} {escape(command)}", soft_wrap=True, highlight=False)
