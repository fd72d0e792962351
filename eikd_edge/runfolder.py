"""Which files in a run folder are eikd-edge's, and how a run is replaced without ever losing the old one early.

A run folder is one whose recipe.resolved.yaml was written by eikd-edge (it parses and names `eikd_edge_version`).
Only the files listed here are the tool's: `--overwrite` moves those, and only those, and a user's own files in
the folder (export/important.txt) are never touched.

Replacing a run is journaled in RUN/.eikd-edge-previous: the old run's files are moved there before the new run
writes anything, moved back if the command fails before the new run's first checkpoint, and dropped once it gets
there (`Replacement.commit`). A command killed in between leaves the journal behind, and the next command that
writes the folder restores the old run from it: without a checkpoint the new run was never a run.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from eikd_edge.atomic import sweep_temps
from eikd_edge.backends import device_bound_formats
from eikd_edge.errors import EikdError
from eikd_edge.formats import (
    BUILD_SCRIPT,
    CALIBRATION_CACHE,
    FORMATS,
    TARGET_FILES,
    TIMING_CACHE,
    TRT_QDQ_ONNX,
    build_record_path,
)
from eikd_edge.image_files import store_names
from eikd_edge.run import NAMES, RunPaths
from eikd_edge.runlock import LOCK_NAME, run_lock

ROOT_FILES = frozenset(
    path.name
    for path in (
        NAMES.student,
        NAMES.train_state,
        NAMES.metrics,
        NAMES.selection,
        NAMES.recipe,
        NAMES.validation,
        NAMES.bench,
        *NAMES.reports,
    )
)
CACHE_FILES = frozenset({NAMES.teacher_outputs.name, NAMES.synthetic_outputs.name}) | store_names()
EXPORT_FILES = frozenset(
    {f.file for f in FORMATS if f.exported}
    | {build_record_path(Path(f.file)).name for f in device_bound_formats()}
    | {NAMES.export_record.name, TRT_QDQ_ONNX, CALIBRATION_CACHE, TIMING_CACHE, BUILD_SCRIPT}
    | set(TARGET_FILES)
    | {name + ".refused" for name in TARGET_FILES}
)
SYNTHETIC_MANIFEST = "synthesis.json"
_SYNTHETIC_IMAGE = re.compile(r"^synth_\d+\.png$")
_CACHE, _EXPORT, _SYNTHETIC = NAMES.cache.name, NAMES.export_dir.name, NAMES.synthetic.name
_SUBFOLDERS = (_CACHE, _EXPORT, _SYNTHETIC)
REUSABLE = (_CACHE, _SYNTHETIC)  # checked against the teacher/pool before reuse, so a new run may keep them
MAX_RECIPE_BYTES = 1 << 20
_INCOMPLETE = ".incomplete"  # in the journal: the folder's own files are still the old run's
_DISCARD = ".eikd-edge-discard"
INT8_TEMP = re.compile(r"^\.int8-(trt-)?[A-Za-z0-9_]{8}$")  # export/quantize.py's temporary folders


def owned(rel: PurePosixPath) -> bool:
    """True for a path (relative to the run folder) that eikd-edge writes."""
    parts = rel.parts
    if len(parts) == 1:
        return parts[0] in ROOT_FILES
    if len(parts) != 2:
        return False
    folder, name = parts
    if folder == _CACHE:
        return name in CACHE_FILES
    if folder == _EXPORT:
        return name in EXPORT_FILES
    if folder == _SYNTHETIC:
        return name == SYNTHETIC_MANIFEST or bool(_SYNTHETIC_IMAGE.match(name))
    return False


def owned_files(root: Path) -> list[PurePosixPath]:
    """The tool's files present in `root` (plain files or links, never folders), relative to it."""
    found: list[PurePosixPath] = []
    for folder in ("", *_SUBFOLDERS):
        try:
            entries = sorted((root / folder).iterdir()) if (root / folder).is_dir() else []
        except OSError:
            continue
        for entry in entries:
            rel = PurePosixPath(folder, entry.name) if folder else PurePosixPath(entry.name)
            if owned(rel) and (entry.is_symlink() or entry.is_file()):
                found.append(rel)
    return found


def read_marker(root: Path) -> dict[str, Any] | None:
    """recipe.resolved.yaml when eikd-edge wrote it (parses, names eikd_edge_version), else None."""
    import yaml

    path = RunPaths(Path(root)).recipe
    try:
        if not path.is_file() or path.stat().st_size > MAX_RECIPE_BYTES:
            return None
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) and "eikd_edge_version" in data else None


def is_run_folder(root: Path) -> bool:
    return read_marker(root) is not None


def folder_state(run: RunPaths) -> str:
    """One of: empty (missing, or holding only the lock), run (an eikd-edge run folder), foreign (anything else)."""
    if not run.root.exists():
        return "empty"
    if not run.root.is_dir():
        return "foreign"
    if is_run_folder(run.root):
        return "run"
    others = [p for p in run.root.iterdir() if p.name not in (LOCK_NAME, run.previous.name, _DISCARD)]
    return "foreign" if others else "empty"


def refuse_foreign(run: RunPaths) -> None:
    raise EikdError(
        f"{run.root} is not empty and is not an eikd-edge run folder (no {run.recipe.name} written by "
        "eikd-edge); pick another --out"
    )


def existing_run_message(run: RunPaths, command: str) -> str:
    """Why `command` will not write into the run already in the folder, and what to do instead."""
    stage = (read_marker(run.root) or {}).get("stage")
    if run.train_state.is_file():
        if command == "distill":
            return f"{run.root} already holds a run; use --resume to continue it or --overwrite to replace it"
        return f"{run.root} already holds a run; use --overwrite to replace the whole run, or pick another --out"
    if run.student.is_file():
        return f"{run.root} already holds a run; use --overwrite to replace it, or pick another --out"
    if stage == "select":
        return f"{run.root} already holds a selection from `eikd-edge select`; use --overwrite to replace it"
    return (
        f"{run.root} holds an unfinished run that stopped before its first checkpoint (nothing to resume); "
        "use --overwrite to start it again"
    )


@dataclass
class Replacement:
    """A new run being written into a folder; the old run's files wait in the journal until `commit`."""

    run: RunPaths
    active: bool

    @classmethod
    def none(cls, run: RunPaths) -> Replacement:
        """Nothing to journal (--resume continues the run in place: a failure must never remove it)."""
        return cls(run, False)

    @classmethod
    def begin(cls, run: RunPaths) -> Replacement:
        """Move the tool's files aside (the user's stay), keeping the reusable, self-checking caches in place."""
        journal = run.previous
        journal.mkdir(parents=True, exist_ok=True)
        (journal / _INCOMPLETE).touch()
        for rel in owned_files(run.root):
            target = journal / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(run.root / rel, target)
        (journal / _INCOMPLETE).unlink()
        for rel in owned_files(journal):
            if rel.parts[0] in REUSABLE and not (journal / rel).is_symlink():
                _link_or_copy(journal / rel, run.root / rel)
        return cls(run, True)

    def commit(self) -> None:
        """The new run is ready for its first checkpoint: the old run's files go for good."""
        if self.active:
            _drop_journal(self.run)
            self.active = False

    def rollback(self) -> None:
        """The new run failed before its first checkpoint: remove what it wrote, put the old run back."""
        if self.active:
            restore_journal(self.run)
            self.active = False

    def __enter__(self) -> Replacement:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.rollback()


def restore_journal(run: RunPaths) -> bool:
    """Put back the run a replacement had moved aside; True when there was one to put back."""
    journal = run.previous
    if not journal.is_dir():
        return False
    marker = journal / _INCOMPLETE
    if not marker.exists():  # the folder holds the new run's files: remove them first
        for rel in owned_files(run.root):
            (run.root / rel).unlink(missing_ok=True)
        marker.touch()
    for rel in owned_files(journal):
        (run.root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(journal / rel, run.root / rel)
    _drop_journal(run)
    _remove_empty_subfolders(run.root)
    return True


def _drop_journal(run: RunPaths) -> None:
    discard = run.root / _DISCARD
    if run.previous.is_dir():
        shutil.rmtree(discard, ignore_errors=True)
        os.replace(run.previous, discard)  # one rename: a kill now cannot leave half a journal behind
    shutil.rmtree(discard, ignore_errors=True)


def _remove_empty_subfolders(root: Path) -> None:
    for folder in _SUBFOLDERS:
        with suppress(OSError):
            (root / folder).rmdir()


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        with suppress(OSError):  # only a cache: the new run recomputes it
            shutil.copy2(source, target)


def sweep_leftovers(run: RunPaths) -> None:
    """Temps of killed atomic writes and the INT8 work folders of a killed export: the tool's own names only."""
    sweep_temps(run.root, lambda name: owned(PurePosixPath(name)))
    for folder in _SUBFOLDERS:
        sweep_temps(run.root / folder, lambda name, f=folder: owned(PurePosixPath(f, name)))
    try:
        work = [p for p in run.export_dir.iterdir() if INT8_TEMP.match(p.name) and p.is_dir() and not p.is_symlink()]
    except OSError:
        work = []
    for folder in work:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def writing_run(root: Path, command: str, create: bool = False) -> Iterator[RunPaths]:
    """Hold the run folder's lock, finish what a killed command left half done, then run the body."""
    from rich.markup import escape

    from eikd_edge.console import err_console

    with run_lock(root, command, create=create):
        run = RunPaths(Path(root))
        shutil.rmtree(run.root / _DISCARD, ignore_errors=True)
        if restore_journal(run):
            err_console.print(
                f"[yellow]note:[/] {escape(str(run.root))}: a command that was replacing this run was stopped "
                "before the new run's first checkpoint; the previous run was put back",
                highlight=False,
            )
        sweep_leftovers(run)
        yield run
