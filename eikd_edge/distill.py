"""The distillation stage: select from the pool, train the student against the teacher, keep the best epoch.

Checkpoints are atomic and written every epoch, so a killed run resumes (`resume=True`) from the last one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eikd_edge import __version__
from eikd_edge.atomic import write_json_atomic, write_yaml_atomic
from eikd_edge.config import Recipe
from eikd_edge.data import DecodeReport, iter_decoded, load_labeled_folder
from eikd_edge.distributed import DistContext, barrier, cleanup, init_distributed
from eikd_edge.errors import EikdError
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import TeacherModel, load_teacher
from eikd_edge.novel import NovelConfig, find_novel
from eikd_edge.run import RunPaths
from eikd_edge.scoring import PoolScores, merge_pools, progress_bar, score_pool
from eikd_edge.selection import Selection, select
from eikd_edge.synthesis import synthesize
from eikd_edge.trainer import Trainer


@dataclass(frozen=True)
class DistillInputs:
    teacher: Path
    unlabeled: Path | None  # None: data-free, synthetic images only (recipe synthesis.count > 0)
    val: Path | None = None
    teacher_arch: str | None = None
    trust_pickle: bool = False
    spec_overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher": str(Path(self.teacher).resolve()),
            "teacher_arch": self.teacher_arch,
            "trust_pickle": self.trust_pickle,
            "spec_overrides": dict(self.spec_overrides),
            "unlabeled": str(Path(self.unlabeled).resolve()) if self.unlabeled else None,
            "val": str(Path(self.val).resolve()) if self.val else None,
        }


@dataclass(frozen=True)
class DistillResult:
    run: RunPaths
    metrics: dict[str, Any]  # empty on ranks other than 0
    selection: Selection
    is_main: bool = True


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EikdError("train.device is cuda but no CUDA device is visible; use train.device=cpu or auto")
    return device


def load_inputs_teacher(inputs: DistillInputs) -> TeacherModel:
    return load_teacher(inputs.teacher, inputs.teacher_arch, inputs.trust_pickle, inputs.spec_overrides)


def run_selection(
    inputs: DistillInputs,
    recipe: Recipe,
    out: Path,
    teacher: TeacherModel | None = None,
    device: torch.device | None = None,
    ctx: DistContext | None = None,
    novel: NovelConfig | None = None,
) -> tuple[TeacherModel, Selection, dict[str, Any]]:
    """Score the pool (field images, synthetic ones, or both) with the teacher and write selection.json.

    Returns the teacher, the selection and the extra sections written beside it ("synthesis", "novel").
    """
    ctx = ctx or DistContext()
    device = device or resolve_device(recipe.train.device, ctx)
    teacher = (teacher or load_inputs_teacher(inputs)).to(device)
    run = RunPaths(Path(out))
    if inputs.unlabeled is None and recipe.synthesis.count == 0:
        raise EikdError("no training images: give --unlabeled DIR, or --synthesize N for data-free distillation")
    batch, want_bn = recipe.selection.batch_size, recipe.selection.sampler == "odsd"
    pools: list[PoolScores] = []
    extras: dict[str, Any] = {}
    if inputs.unlabeled is not None:
        pools.append(score_pool(teacher, inputs.unlabeled, device, batch, run.teacher_outputs, ctx, want_bn))
    if recipe.synthesis.count > 0:
        extras["synthesis"] = _synthesize_for_run(teacher, recipe, run, device, ctx)
        pools.append(score_pool(teacher, run.synthetic, device, batch, run.synthetic_outputs, ctx, want_bn))
    pool = pools[0] if len(pools) == 1 else merge_pools(pools[0], pools[1])
    selection = select(pool, teacher.spec.classes, recipe.selection, recipe.method, recipe.train.seed)
    if novel is not None:
        report = find_novel(pool.logits, pool.embeddings, pool.paths, teacher.spec.classes, novel)
        extras["novel"] = report.to_json()
    if ctx.is_main:
        write_json_atomic(run.selection, {**selection.to_json(), **extras})
    return teacher, selection, extras


def _synthesize_for_run(
    teacher: TeacherModel, recipe: Recipe, run: RunPaths, device: torch.device, ctx: DistContext
) -> dict[str, Any]:
    """Synthesise into RUN/synthetic on rank 0 (reused while the teacher and settings match); others wait."""
    summary: dict[str, Any] = {}
    if ctx.is_main:
        show = not os.environ.get("EIKD_NO_PROGRESS")
        with progress_bar(disable=not show) as bar:
            result = synthesize(teacher, recipe.synthesis.count, recipe.synthesis, run.synthetic, device, bar)
        summary = {
            "count": result.count,
            "seconds": round(result.seconds, 3),
            "reused": result.reused,
            "teacher_fit": round(result.fit, 4),
            "bn_prior": result.bn_prior,
            "folder": str(result.folder),
        }
    barrier(ctx)
    return summary


def prepare_run_folder(run: RunPaths, resume: bool, overwrite: bool) -> None:
    """Refuse to destroy an earlier run unless told to; --overwrite removes only eikd-edge's own outputs."""
    has_run = run.student.exists() or run.train_state.exists() or run.metrics.exists()
    if resume:
        if not run.train_state.is_file():
            raise EikdError(f"nothing to resume in {run.root} (no {run.train_state.name}); drop --resume")
        return
    if has_run and not overwrite:
        raise EikdError(f"{run.root} already holds a run; use --resume to continue it or --overwrite to replace it")
    if has_run:
        for path in (run.student, run.train_state, run.metrics, run.selection, run.recipe):
            path.unlink(missing_ok=True)
        shutil.rmtree(run.export_dir, ignore_errors=True)
    run.root.mkdir(parents=True, exist_ok=True)


def _decode_subset(pool: PoolScores, indices: np.ndarray, spec: InputSpec) -> tuple[torch.Tensor, np.ndarray]:
    """Decode the chosen pool images once to uint8 at training resolution (files that vanished are dropped)."""
    paths = [pool.root / pool.paths[i] for i in indices]
    report = DecodeReport()
    images, kept = [], []
    for batch in iter_decoded(paths, spec.input_size, 512, report):
        images.append(batch.images)
        kept.extend(batch.indices)
    if not kept:
        return torch.empty(0, 3, *spec.input_size, dtype=torch.uint8), np.zeros(0, dtype=np.int64)
    return torch.cat(images), indices[np.asarray(kept)]


def distill(
    inputs: DistillInputs,
    recipe: Recipe,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
) -> DistillResult:
    """Select, train and checkpoint; returns the metrics also written to RUN/metrics.json."""
    ctx = init_distributed(
        torch.device("cuda") if recipe.train.device != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    )
    try:
        return _distill(inputs, recipe, RunPaths(Path(out)), resume, overwrite, ctx)
    finally:
        cleanup(ctx)


def _distill(
    inputs: DistillInputs, recipe: Recipe, run: RunPaths, resume: bool, overwrite: bool, ctx: DistContext
) -> DistillResult:
    device = resolve_device(recipe.train.device, ctx)
    if ctx.is_main:
        prepare_run_folder(run, resume, overwrite)
        _check_resume_recipe(run, recipe, resume)
    barrier(ctx)
    torch.manual_seed(recipe.train.seed)
    teacher, selection, extras = run_selection(inputs, recipe, run.root, device=device, ctx=ctx)
    if ctx.is_main:
        write_yaml_atomic(
            run.recipe, {"eikd_edge_version": __version__, "inputs": inputs.to_dict(), "recipe": recipe.dump()}
        )
    spec = teacher.spec
    pool = selection.pool
    train_images, train_idx = _decode_subset(pool, selection.train_indices, spec)
    hold_images, hold_idx = _decode_subset(pool, selection.holdout_indices, spec)
    if len(train_idx) < 2:
        raise EikdError("fewer than 2 usable training images after selection; add field images or raise keep_fraction")
    val = load_labeled_folder(inputs.val, spec) if inputs.val else None
    trainer = Trainer(recipe, teacher, spec, device, ctx, run)
    trainer.fit(pool, train_images, train_idx, hold_images, hold_idx, val, resume)
    metrics = trainer.metrics(selection, inputs.val) if ctx.is_main else {}
    if ctx.is_main and "synthesis" in extras:
        metrics["synthesis"] = extras["synthesis"]
    if ctx.is_main:
        write_json_atomic(run.metrics, metrics)
    barrier(ctx)
    return DistillResult(run, metrics, selection, ctx.is_main)


def _check_resume_recipe(run: RunPaths, recipe: Recipe, resume: bool) -> None:
    if not resume or not run.recipe.is_file():
        return
    from eikd_edge.run import read_resolved

    previous = read_resolved(run).get("recipe")
    if previous != recipe.dump():
        raise EikdError(f"--resume with a different recipe than {run.recipe}; resume with the same settings")
