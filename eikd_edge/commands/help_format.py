"""One way to write every option in `--help`: a plain placeholder (PATH, INT, or the option's own metavar such as
KEY=VALUE) instead of Typer's `<type>`, nothing after a flag, and `[default: …]` at the end of the help of every
option that has a default, including the ones whose default comes from the recipe."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

_PLACEHOLDER = {"str": "TEXT", "path": "PATH", "file": "PATH", "directory": "PATH", "int": "INT", "float": "NUMBER"}


def plain_help(command: Any, ctx: Any) -> None:
    """Rewrite the parameters of one click command in place (idempotent: a command is looked up many times)."""
    for param in command.params:
        plain_param(param, ctx)


def plain_param(param: Any, ctx: Any) -> None:
    if param is None or getattr(param, "_eikd_plain", False):
        return
    param._eikd_plain = True
    if getattr(param, "is_flag", False):
        param.metavar = ""
    elif param.param_type_name == "argument":
        param.metavar = param.metavar or param.name.upper()
        param.display_type_rich = _no_type  # the name (RUN, TEACHER) says it: no `<path>` beside it
    elif param.metavar is None:
        param.metavar = _placeholder(param, ctx)
    text = default_text(param)
    if text is not None and param.param_type_name == "option":
        param.show_default = False
        param.help = f"{param.help or ''}  [dim]\\[default: {escape(text)}][/]".strip()


def default_text(param: Any) -> str | None:
    """What `[default: …]` says for an option: its `show_default` text when it has one (a default the recipe
    supplies), the flag that is on for an on/off pair, else the default value; None when there is nothing to say."""
    if isinstance(param.show_default, str):
        return param.show_default
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return param.opts[0] if param.default else param.secondary_opts[0]
        return None
    if param.required or param.default is None or param.default in ((), []):
        return None
    if isinstance(param.default, (list, tuple)):
        return ",".join(str(v) for v in param.default)
    return str(param.default)


def _placeholder(param: Any, ctx: Any) -> str:
    label = param.display_type(ctx).strip("<>")
    label = label.removeprefix("list[").removesuffix("]").removesuffix(" range")
    return _PLACEHOLDER.get(label, "TEXT")


def _no_type(ctx: Any = None) -> None:
    return None
