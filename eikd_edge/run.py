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
    data = yaml.safe_load(run.recipe.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or "inputs" not in data:
        raise EikdError(f"{run.recipe} has no 'inputs' section")
    return data


def load_run_teacher(run: RunPaths) -> Any:
    """The teacher that produced this run, loaded exactly as the run loaded it."""
    from eikd_edge.models.teacher import load_teacher

    inputs = read_resolved(run)["inputs"]
    return load_teacher(
        Path(inputs["teacher"]),
        arch=inputs.get("teacher_arch"),
        trust_pickle=bool(inputs.get("trust_pickle", False)),
        spec_overrides=inputs.get("spec_overrides") or {},
    )
