"""The distillation stage: select from the pool, train the student against the teacher, keep the best epoch.

Checkpoints are atomic and written every epoch, so a killed run resumes (`resume=True`) from the last one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape
from torch import nn

from eikd_edge import __version__, image_store
from eikd_edge.agreement import constant_guess_rate
from eikd_edge.atomic import write_json_atomic, write_yaml_atomic
from eikd_edge.checkpoint import student_weights_record
from eikd_edge.config import Recipe
from eikd_edge.console import err_console
from eikd_edge.data import load_labeled_folder
from eikd_edge.devices import resolve_device
from eikd_edge.distill.evaluate import Checks
from eikd_edge.distill.inputs import (
    CheckedInputs,
    DistillInputs,
    check_inputs,
    check_resume_inputs,
    load_inputs_teacher,
)
from eikd_edge.distill.loop import Trainer
from eikd_edge.distill.pool import run_selection, stored_subset
from eikd_edge.distributed import DistContext, barrier, cleanup, init_distributed
from eikd_edge.errors import EikdError
from eikd_edge.models.pretrained import build_student
from eikd_edge.models.teacher import TeacherModel
from eikd_edge.models.zoo import size_warning
from eikd_edge.run import RunPaths
from eikd_edge.runfolder import (
    Replacement,
    existing_run_message,
    folder_state,
    refuse_foreign,
    writing_run,
)
from eikd_edge.selection import Selection


@dataclass(frozen=True)
class DistillResult:
    run: RunPaths
    metrics: dict[str, Any]  # empty on ranks other than 0
    selection: Selection
    is_main: bool = True


def prepare_run_folder(
    run: RunPaths, inputs: DistillInputs, recipe: Recipe, resume: bool, overwrite: bool
) -> tuple[CheckedInputs, Replacement]:
    """Refuse to destroy an earlier run unless told to, and touch nothing until every input has been checked.

    A folder is resumable when it holds train_state.pt (the last checkpoint); both refusals agree on that.
    --overwrite moves only eikd-edge's own files aside; they come back if the new run fails before its first
    checkpoint (see eikd_edge.runfolder).
    """
    if resume and overwrite:
        raise EikdError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    state = folder_state(run)
    if resume:
        if state != "run":
            raise EikdError(f"nothing to resume in {run.root}: it is not an eikd-edge run folder; drop --resume")
        if not run.train_state.is_file() and run.metrics.is_file():
            raise EikdError(
                f"nothing to resume in {run.root}: the run finished ({run.metrics.name} is written; its training state "
                "was dropped, --keep-state keeps it); use --overwrite to run it again"
            )
        if not run.train_state.is_file():
            raise EikdError(
                f"nothing to resume in {run.root}: no {run.train_state.name} (the run stopped before its first "
                "checkpoint); start it again with --overwrite instead of --resume"
            )
    elif state == "foreign":
        refuse_foreign(run)
    elif state == "run" and not overwrite:
        raise EikdError(existing_run_message(run, "distill"))
    checked = check_inputs(inputs, recipe, run)
    if resume:
        check_resume_inputs(run, inputs, recipe, checked)
        return checked, Replacement.none(run)
    return checked, Replacement.begin(run)


def write_resolved(
    run: RunPaths, inputs: DistillInputs, recipe: Recipe, checked: CheckedInputs | None, stage: str | None = None
) -> None:
    """recipe.resolved.yaml: every setting of the run, and the mark that makes the folder an eikd-edge run."""
    data: dict[str, Any] = {"eikd_edge_version": __version__}
    if stage:
        data["stage"] = stage
    data["inputs"] = {**inputs.to_dict(), **(checked.record if checked else {})}
    data["recipe"] = recipe.dump()
    write_yaml_atomic(run.recipe, data)


def prepare_student(
    recipe: Recipe, teacher: TeacherModel, trust_pickle: bool, run: RunPaths, resume: bool, ctx: DistContext
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The student to train and the record of the weights it started from.

    A new run loads `student.weights`; --resume restores the training state over a fresh student instead, so the
    record is read back from student.pt (the weights file may be gone by then).
    """
    cfg = recipe.student
    if resume:
        student, _ = build_student(cfg.arch, teacher.num_classes, cfg.width)
        weights = student_weights_record(run.student) if cfg.weights else None
    else:
        student, loaded = build_student(cfg.arch, teacher.num_classes, cfg.width, cfg.weights, trust_pickle)
        weights = loaded.to_json() if loaded else None
    return student, weights


def _warn_if_large(arch: str, student_params: int, teacher_params: int) -> None:
    """Said with the results (the summary shows both sizes), so that an error stays the only line of a failed run."""
    warning = size_warning(arch, student_params, teacher_params)
    if warning:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def distill(
    inputs: DistillInputs,
    recipe: Recipe,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    keep_state: bool = False,
) -> DistillResult:
    """Select, train and checkpoint; returns the metrics also written to RUN/metrics.json.

    Rank 0 holds the run folder's lock and checks every input before it touches the folder. A finished run drops
    train_state.pt (the optimizer's state, as large as the student twice over) unless `keep_state`.
    """
    ctx = init_distributed(
        torch.device("cuda") if recipe.train.device != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    )
    run = RunPaths(Path(out))
    try:
        if not ctx.is_main:
            return _distill(inputs, recipe, run, resume, ctx, None, Replacement.none(run), keep_state)
        with writing_run(run.root, "distill", create=True):
            checked, replacement = prepare_run_folder(run, inputs, recipe, resume, overwrite)
            with replacement:
                return _distill(inputs, recipe, run, resume, ctx, checked, replacement, keep_state)
    finally:
        cleanup(ctx)


def _distill(
    inputs: DistillInputs,
    recipe: Recipe,
    run: RunPaths,
    resume: bool,
    ctx: DistContext,
    checked: CheckedInputs | None,
    replacement: Replacement,
    keep_state: bool = False,
) -> DistillResult:
    device = resolve_device(recipe.train.device, ctx.local_rank)
    barrier(ctx)
    torch.manual_seed(recipe.train.seed)
    teacher, scan = (checked.teacher, checked.pool_scan) if checked else (load_inputs_teacher(inputs), None)
    student, weights = prepare_student(recipe, teacher, inputs.trust_pickle, run, resume, ctx)
    teacher, selection, extras = run_selection(
        inputs, recipe, run.root, teacher=teacher, device=device, ctx=ctx, pool_scan=scan
    )
    if ctx.is_main:
        write_resolved(run, inputs, recipe, checked)
    spec = teacher.spec
    pool = selection.pool
    train_images, train_idx = stored_subset(run, "train", pool, selection.train_indices, spec, ctx, inputs.threads)
    hold_images, hold_idx = stored_subset(run, "holdout", pool, selection.holdout_indices, spec, ctx, inputs.threads)
    agree_images, agree_idx = stored_subset(
        run, "agreement", pool, selection.agreement_indices, spec, ctx, inputs.threads
    )
    if len(train_idx) < 2:
        raise EikdError("fewer than 2 usable training images after selection; add field images or raise keep_fraction")
    val = load_labeled_folder(inputs.val, spec) if inputs.val else None
    trainer = Trainer(recipe, teacher, spec, device, ctx, run, student, weights)
    replacement.commit()  # the new run is about to write its first checkpoint: the old one goes for good
    trainer.fit(pool, train_images, train_idx, Checks(hold_images, hold_idx, agree_images, agree_idx), val, resume)
    metrics = trainer.metrics(selection, inputs.val) if ctx.is_main else {}
    trainer.release()  # the DDP wrapper goes before the process group it talks through
    if ctx.is_main and "synthesis" in extras:
        metrics["synthesis"] = extras["synthesis"]
    if ctx.is_main:
        slice_classes = pool.logits[selection.agreement_indices].argmax(1).numpy()
        metrics["agreement"]["constant_guess"] = constant_guess_rate(slice_classes)
    if ctx.is_main:
        metrics["student"]["weights"] = weights
        write_json_atomic(run.metrics, metrics)
        if not keep_state:  # the run is complete: nothing is left to resume
            run.train_state.unlink(missing_ok=True)
            image_store.remove_sets(run.cache)
        _warn_if_large(recipe.student.arch, metrics["student"]["params"], metrics["teacher"]["params"])
    barrier(ctx)
    return DistillResult(run, metrics, selection, ctx.is_main)
