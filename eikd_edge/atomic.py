"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from eikd_edge.errors import EikdError

TEMP_SUFFIX = ".tmp"
# mkstemp's name: "." + the target's name + "." + 8 random characters + ".tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def temp_target(name: str) -> str | None:
    """The file a leftover temp of `write_atomic` was meant to become, or None for any other name."""
    match = _TEMP_NAME.match(name)
    return match.group("target") if match else None


def sweep_temps(folder: Path, owns: Callable[[str], bool]) -> list[Path]:
    """Remove the temps a killed `write_atomic` left in `folder`, only those whose target `owns` accepts.

    Call it only while no other writer can be at work in `folder` (under the run lock): a live writer's temp
    looks exactly like a leftover.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        target = temp_target(entry.name)
        if target is None or not owns(target) or not entry.is_file() or entry.is_symlink():
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        full = _disk_full_cause(exc)
        if full is not None:
            raise DiskFull(path, full) from exc
        raise
    _fsync_dir(path.parent)
    return path


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DiskFull(EikdError, OSError):
    """The disk (or quota, or file-size limit) ran out while writing; the previous file was left untouched.

    An EikdError, so the CLI prints one line and exits 1; still an OSError for code that catches those.
    """

    def __init__(self, path: Path, errno_: int) -> None:
        self.message = (
            f"no space left writing {path} ({os.strerror(errno_)}); the previous {path.name}, if any, is intact "
            "and no partial file was left; free some space and run the command again (distill: add --resume)"
        )
        OSError.__init__(self, errno_, self.message)

    def __str__(self) -> str:
        return self.message


def _disk_full_cause(exc: BaseException) -> int | None:
    """The errno of a disk-full OSError in the exception or its chain (torch wraps it in a RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFull):
            return None  # already reported by an inner write_atomic
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current.errno
        current = current.__cause__ or current.__context__
    return None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> Path:
    """Strict JSON: NaN and infinities (an empty holdout's agreement, a diverged loss) are written as null, which
    every parser reads, instead of Python's `NaN`, which strict parsers reject."""
    text = json.dumps(finite_or_null(data), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def finite_or_null(value: Any) -> Any:
    """`value` with every non-finite float (also numpy/torch scalars) replaced by None, recursively."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    if not isinstance(value, bool | int | str | None) and hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_yaml_atomic(path: Path, data: Any) -> Path:
    return write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
