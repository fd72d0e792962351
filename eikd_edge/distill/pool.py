"""The images the student trains on: the pool (field images, synthetic ones, or both) scored by the teacher,
the selection written to selection.json, and the chosen images stored at training resolution in the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from eikd_edge import image_store
from eikd_edge.agreement import agreement_slice
from eikd_edge.atomic import write_json_atomic
from eikd_edge.config import Recipe
from eikd_edge.data import confined
from eikd_edge.devices import resolve_device
from eikd_edge.disk_images import DiskImages
from eikd_edge.distill.inputs import DistillInputs, load_inputs_teacher
from eikd_edge.distill.methods import METHODS
from eikd_edge.distributed import DistContext, barrier
from eikd_edge.errors import EikdError
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import TeacherModel
from eikd_edge.novel import NovelConfig, find_novel
from eikd_edge.pool_scores import merge_pools
from eikd_edge.run import RunPaths
from eikd_edge.scoring import FolderScan, PoolScores, score_pool
from eikd_edge.selection import Selection, select
from eikd_edge.synthesis import synthesize
from eikd_edge.ui import progress_bar, show_progress


def run_selection(
    inputs: DistillInputs,
    recipe: Recipe,
    out: Path,
    teacher: TeacherModel | None = None,
    device: torch.device | None = None,
    ctx: DistContext | None = None,
    novel: NovelConfig | None = None,
    pool_scan: FolderScan | None = None,
) -> tuple[TeacherModel, Selection, dict[str, Any]]:
    """Score the pool (field images, synthetic ones, or both) with the teacher and write selection.json.

    Returns the teacher, the selection and the extra sections written beside it ("synthesis", "novel").
    """
    ctx = ctx or DistContext()
    device = device or resolve_device(recipe.train.device, ctx.local_rank)
    teacher = (teacher or load_inputs_teacher(inputs)).to(device)
    run = RunPaths(Path(out))
    if inputs.unlabeled is None and recipe.synthesis.count == 0:
        raise EikdError("no training images: give --unlabeled DIR, or --synthesize N for data-free distillation")
    extras: dict[str, Any] = {}
    pools = _score_pools(inputs, recipe, run, teacher, device, ctx, pool_scan, extras)
    pool = pools[0] if len(pools) == 1 else merge_pools(pools[0], pools[1])
    field_count = len(pools[0].paths) if inputs.unlabeled is not None else 0  # field images come first
    cfg = recipe.selection
    agreement = agreement_slice(pool.paths[:field_count], cfg.agreement_fraction, cfg.agreement_max)
    selection = select(pool, teacher.spec.classes, cfg, recipe.method, recipe.train.seed, agreement)
    if novel is not None:
        report = find_novel(pool.logits, pool.embeddings, pool.paths, teacher.spec.classes, novel)
        extras["novel"] = report.to_json()
    if ctx.is_main:
        write_json_atomic(run.selection, {**selection.to_json(), **extras})
    return teacher, selection, extras


def _score_pools(
    inputs: DistillInputs,
    recipe: Recipe,
    run: RunPaths,
    teacher: TeacherModel,
    device: torch.device,
    ctx: DistContext,
    pool_scan: FolderScan | None,
    extras: dict[str, Any],
) -> list[PoolScores]:
    """The teacher's scores of the field images, then of the synthetic ones (synthesised first: their summary
    goes into `extras`)."""
    batch = recipe.selection.batch_size
    want_bn = METHODS[recipe.method].samples_by_odsd(recipe.selection.sampler)  # only ODSD's closeness reads them
    pools: list[PoolScores] = []
    if inputs.unlabeled is not None:
        pools.append(
            score_pool(
                teacher,
                inputs.unlabeled,
                device,
                batch,
                run.teacher_outputs,
                ctx,
                want_bn,
                (run.root,),
                pool_scan,
                inputs.threads,
                inputs.cache_dir,
            )
        )
    if recipe.synthesis.count > 0:
        extras["synthesis"] = _synthesize_for_run(teacher, recipe, run, device, ctx)
        pools.append(
            score_pool(
                teacher, run.synthetic, device, batch, run.synthetic_outputs, ctx, want_bn, workers=inputs.threads
            )
        )
    return pools


def _synthesize_for_run(
    teacher: TeacherModel, recipe: Recipe, run: RunPaths, device: torch.device, ctx: DistContext
) -> dict[str, Any]:
    """Synthesise into RUN/synthetic on rank 0 (reused while the teacher and settings match); others wait."""
    summary: dict[str, Any] = {}
    if ctx.is_main:
        with progress_bar(disable=not show_progress()) as bar:
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


def stored_subset(
    run: RunPaths,
    name: str,
    pool: PoolScores,
    indices: np.ndarray,
    spec: InputSpec,
    ctx: DistContext,
    workers: int | None,
) -> tuple[DiskImages, np.ndarray]:
    """The chosen pool images at training resolution, decoded once into the run's image file (files that
    vanished are dropped); rank 0 decodes, the other ranks read the same file."""
    paths = [confined(pool.root, pool.paths[i]) for i in indices]
    if ctx.is_main:
        stored = image_store.load_or_decode(run.cache, name, paths, spec, workers)
    barrier(ctx)
    if not ctx.is_main:
        found = image_store.open_stored(run.cache, name, image_store.images_key(paths, spec), spec, len(paths))
        if found is None:
            raise EikdError(f"rank {ctx.rank} cannot read the decoded {name} images rank 0 wrote in {run.cache}")
        stored = found
    return stored.images, indices[stored.kept]
