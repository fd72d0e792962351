"""No module over 300 lines, no function over 50: a file or a function that grows past that is split by what it does
before it grows further. Read from the source with `ast` (nothing is imported). A function's length runs from its
`def` line to its last line (decorators excluded), a module's is its physical line count."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "eikd_edge"

MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 50

# Permanent exceptions, each with its reason.
EXEMPT: dict[str, str] = {
    "eikd_edge/resources/device/eikd_device.py": "shipped to the device as one standalone file (no package there)",
}

# What is still over the limits and not yet split: a ratchet. An entry ("path" for a module, "path::function" for a
# function) comes off as soon as it is split; an entry that is no longer over fails the test until it is taken off.
NOT_YET_SPLIT: dict[str, str] = {}


def offenders() -> dict[str, int]:
    """Every module and function over its limit, keyed like NOT_YET_SPLIT, with its length in lines."""
    found: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            found[rel] = lines
        for node in ast.walk(ast.parse(source, rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found[f"{rel}::{node.name}"] = max(length, found.get(f"{rel}::{node.name}", 0))
    return found


def exempt(key: str) -> bool:
    return key.split("::")[0] in EXEMPT


def test_the_exemptions_name_real_modules() -> None:
    assert [path for path in EXEMPT if not (ROOT / path).is_file()] == []


def test_no_module_or_function_is_over_the_limit() -> None:
    found = offenders()
    over = sorted(key for key in found if not exempt(key) and key not in NOT_YET_SPLIT)
    assert not over, (
        f"over the limits ({MAX_MODULE_LINES} lines a module, {MAX_FUNCTION_LINES} a function), split by what it does: "
        + ", ".join(f"{key} ({found[key]} lines)" for key in over)
    )
    stale = sorted(key for key in NOT_YET_SPLIT if key not in found)
    assert not stale, "no longer over the limits (take off NOT_YET_SPLIT): " + ", ".join(stale)
