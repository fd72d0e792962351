"""The run folder: the hand-off between stages. Every command reads from and writes to these paths."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eikd_edge.errors import EikdError


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def student(self) -> Path:
        return self.root / "student.pt"

    @property
    def selection(self) -> Path:
        return self.root / "selection.json"

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.resolved.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def train_state(self) -> Path:
        """Full training state (optimizer, schedule, RNG) for --resume; student.pt stays the clean artifact."""
        return self.root / "train_state.pt"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def teacher_outputs(self) -> Path:
        return self.cache / "teacher_outputs.pt"

    @property
    def synthetic(self) -> Path:
        """Images synthesised for this run (`distill --synthesize N`), reused while teacher and settings match."""
        return self.root / "synthetic"

    @property
    def synthetic_outputs(self) -> Path:
        return self.cache / "synthetic_outputs.pt"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def export_record(self) -> Path:
        return self.export_dir / "export.json"

    @property
    def validation(self) -> Path:
        return self.root / "validate.json"

    @property
    def bench(self) -> Path:
        return self.root / "bench.json"

    @property
    def reports(self) -> tuple[Path, Path, Path]:
        return self.root / "report.json", self.root / "report.md", self.root / "report.html"

    @property
    def previous(self) -> Path:
        """Where `--overwrite` keeps the run it replaces until the new run reaches its first checkpoint."""
        return self.root / ".eikd-edge-previous"


# The run folder's names alone (student.pt, export/export.json, ...): for matching and naming files, never for
# opening them. Every other module takes a run-folder file name from RunPaths, this or a RunPaths of a real root.
NAMES = RunPaths(Path())


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise EikdError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EikdError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise EikdError(f"{what} {path} is not a JSON object")
    return data


def read_resolved(run: RunPaths) -> dict[str, Any]:
    """recipe.resolved.yaml: {'eikd_edge_version', 'inputs': {...}, 'recipe': {...}}."""
    import yaml

    if not run.recipe.is_file():
        raise EikdError(f"{run.root} is not a run folder (no {run.recipe.name}); run `eikd-edge distill` first")
    try:
        data = yaml.safe_load(run.recipe.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:  # safe_load: a python/* tag is an error, not code
        raise EikdError(f"cannot read {run.recipe}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), dict):
        raise EikdError(f"{run.recipe} has no 'inputs' section")
    return data


class TeacherChanged(EikdError):
    """The teacher file no longer holds the bytes the run was distilled from."""


def load_run_teacher(run: RunPaths, trust_pickle: bool = False) -> Any:
    """The teacher that produced this run, loaded as the run loaded it once its bytes are proven unchanged.

    `trust_pickle` comes from the command line of the command being run, never from the run folder: a run folder
    may come from anyone, and its recipe must not be able to switch unpickling on.
    """
    from eikd_edge.checkpoint import teacher_record
    from eikd_edge.models.teacher import file_sha256, load_teacher

    inputs = read_resolved(run)["inputs"]
    teacher = Path(str(inputs.get("teacher") or ""))
    if not teacher.is_file():
        raise EikdError(f"teacher file not found: {teacher}")
    record = teacher_record(run.student)
    if record is None:
        raise EikdError(f"{run.student} records no teacher sha256, so {teacher} cannot be checked: not loaded")
    digest = file_sha256(teacher)
    if digest != record[1]:
        raise TeacherChanged(
            f"teacher {teacher} changed since this run was distilled (sha256 {record[1][:12]}... recorded in "
            f"{run.student.name}, now {digest[:12]}...); restore it or distil again"
        )
    arch, overrides = inputs.get("teacher_arch"), inputs.get("spec_overrides") or {}
    if not isinstance(overrides, dict) or not (arch is None or isinstance(arch, str)):
        raise EikdError(f"{run.recipe} has a malformed teacher_arch or spec_overrides")
    return load_teacher(teacher, arch=arch, trust_pickle=trust_pickle, spec_overrides=overrides)
