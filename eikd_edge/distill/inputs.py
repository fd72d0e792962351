"""The distill stage's inputs, checked before the run folder is touched: the teacher loads, the pool exists and
decodes, --val exists, and on --resume that they are the ones the run was started with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eikd_edge.config import Recipe
from eikd_edge.data import (
    BadImage,
    decode_image,
)
from eikd_edge.errors import EikdError
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import TeacherModel, load_teacher
from eikd_edge.run import RunPaths
from eikd_edge.runfolder import read_marker
from eikd_edge.scoring import FolderScan, scan_folder


@dataclass(frozen=True)
class DistillInputs:
    """What `distill` reads: the teacher file, the unlabeled field folder and an optional labeled val folder."""

    teacher: Path
    unlabeled: Path | None  # None: data-free, synthetic images only (recipe synthesis.count > 0)
    val: Path | None = None
    teacher_arch: str | None = None
    trust_pickle: bool = False
    spec_overrides: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None  # image decoding threads (None: the default); not part of the run's identity
    cache_dir: Path | None = None  # teacher scores shared between runs (None: off); not part of the run's identity

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher": str(Path(self.teacher).resolve()),
            "teacher_arch": self.teacher_arch,
            "trust_pickle": self.trust_pickle,
            "spec_overrides": dict(self.spec_overrides),
            "unlabeled": str(Path(self.unlabeled).resolve()) if self.unlabeled else None,
            "val": str(Path(self.val).resolve()) if self.val else None,
        }


def load_inputs_teacher(inputs: DistillInputs) -> TeacherModel:
    return load_teacher(inputs.teacher, inputs.teacher_arch, inputs.trust_pickle, inputs.spec_overrides)


PREFLIGHT_DECODES = 32  # pool files tried before the run folder is touched; the full scan judges the rest


@dataclass(frozen=True)
class CheckedInputs:
    """The inputs of a run, checked before its folder is touched: the loaded teacher, and what identifies the
    teacher and the pool in recipe.resolved.yaml (so --resume can tell it is given the same ones)."""

    teacher: TeacherModel
    record: dict[str, Any]
    pool_scan: FolderScan | None = None


def check_inputs(inputs: DistillInputs, recipe: Recipe, run: RunPaths) -> CheckedInputs:
    """Teacher loads, pool exists and decodes, --val exists: a mistyped input fails before anything is moved."""
    if inputs.unlabeled is None and recipe.synthesis.count == 0:
        raise EikdError("no training images: give --unlabeled DIR, or --synthesize N for data-free distillation")
    if inputs.val is not None and not Path(inputs.val).is_dir():
        raise EikdError(f"labeled folder not found: {inputs.val}")
    teacher = load_inputs_teacher(inputs)
    scan = None
    if inputs.unlabeled is not None:
        scan = _check_pool(Path(inputs.unlabeled), teacher.spec, run)
    record = {"teacher_sha256": teacher.sha256, "unlabeled_fingerprint": scan.fingerprint if scan else None}
    return CheckedInputs(teacher, record, scan)


def _check_pool(root: Path, spec: InputSpec, run: RunPaths) -> FolderScan:
    """The pool walked once, after it is known to hold images and (among its first files) a decodable one."""
    scan = scan_folder(root, (run.root,))
    root, paths = scan.root, scan.paths
    if not paths:
        raise EikdError(f"no images found in {root} (looked for jpg, jpeg, png, webp, bmp, tif, tiff)")
    reasons: dict[str, int] = {}
    for path in paths[:PREFLIGHT_DECODES]:
        try:
            decode_image(path, spec)
            break
        except BadImage as bad:
            reasons[bad.reason] = reasons.get(bad.reason, 0) + 1
    else:
        if len(paths) <= PREFLIGHT_DECODES:
            reason, count = max(reasons.items(), key=lambda item: item[1])
            raise EikdError(
                f"none of the {len(paths)} image files in {root} could be read (most common: {reason}, {count} files)"
            )
    return scan


def check_resume_inputs(run: RunPaths, inputs: DistillInputs, recipe: Recipe, checked: CheckedInputs) -> None:
    """--resume continues only the same run: same recipe, same teacher file, same pool, same teacher settings."""
    resolved = read_marker(run.root) or {}
    before = resolved.get("inputs") if isinstance(resolved.get("inputs"), dict) else {}
    now = {**inputs.to_dict(), **checked.record}
    if "recipe" in resolved and resolved["recipe"] != recipe.dump():
        raise EikdError(f"--resume with a different recipe than {run.recipe}; resume with the same settings")
    recorded_teacher = before.get("teacher_sha256") or _student_teacher_sha256(run)
    if recorded_teacher and recorded_teacher != checked.teacher.sha256:
        raise EikdError(
            f"--resume with another teacher: {inputs.teacher} (sha256 {checked.teacher.sha256[:12]}) is not the "
            f"teacher this run was distilled from (sha256 {str(recorded_teacher)[:12]}); resume with that teacher, "
            "or start a new run with --overwrite"
        )
    pool_changed = before.get("unlabeled") != now["unlabeled"] or (
        "unlabeled_fingerprint" in before and before["unlabeled_fingerprint"] != now["unlabeled_fingerprint"]
    )
    if pool_changed:
        raise EikdError(
            f"--resume with other field images: {inputs.unlabeled} is not the pool this run selected from "
            f"({before.get('unlabeled')}; another folder, or files were added, removed or changed); resume with "
            "that pool, or start a new run with --overwrite"
        )
    for key, what in (("spec_overrides", "--input-size/--mean/--std/--classes"), ("teacher_arch", "--teacher-arch")):
        if key in before and before[key] != now[key]:
            raise EikdError(f"--resume with other {what} than the run was started with; resume with the same ones")


def _student_teacher_sha256(run: RunPaths) -> str | None:
    """The teacher recorded in student.pt, for runs whose recipe.resolved.yaml predates the recorded sha256."""
    try:
        payload = torch.load(run.student, map_location="cpu", weights_only=True)
    except Exception:
        return None
    teacher = payload.get("teacher") if isinstance(payload, dict) else None
    sha = teacher.get("sha256") if isinstance(teacher, dict) else None
    return sha if isinstance(sha, str) else None
