"""The distillation stage: select from the pool, train the student against the teacher, keep the best epoch.

Checkpoints are atomic and written every epoch, so a killed run resumes (`resume=True`) from the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from torch import nn

from eikd_edge import __version__, image_store
from eikd_edge.agreement import agreement_slice, constant_guess_rate
from eikd_edge.atomic import write_json_atomic, write_yaml_atomic
from eikd_edge.checkpoint import student_weights_record
from eikd_edge.config import Recipe
from eikd_edge.console import err_console
from eikd_edge.data import (
    BadImage,
    confined,
    decode_image,
    load_labeled_folder,
)
from eikd_edge.devices import resolve_device
from eikd_edge.disk_images import DiskImages
from eikd_edge.distill.evaluate import Checks
from eikd_edge.distill.loop import Trainer
from eikd_edge.distill.methods import METHODS
from eikd_edge.distributed import DistContext, barrier, cleanup, init_distributed
from eikd_edge.errors import EikdError
from eikd_edge.models.pretrained import build_student
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import TeacherModel, load_teacher
from eikd_edge.models.zoo import size_warning
from eikd_edge.novel import NovelConfig, find_novel
from eikd_edge.run import RunPaths
from eikd_edge.runfolder import (
    Replacement,
    existing_run_message,
    folder_state,
    read_marker,
    refuse_foreign,
    writing_run,
)
from eikd_edge.scoring import FolderScan, PoolScores, merge_pools, scan_folder, score_pool
from eikd_edge.selection import Selection, select
from eikd_edge.synthesis import synthesize
from eikd_edge.ui import progress_bar, show_progress


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


@dataclass(frozen=True)
class DistillResult:
    run: RunPaths
    metrics: dict[str, Any]  # empty on ranks other than 0
    selection: Selection
    is_main: bool = True


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
    batch = recipe.selection.batch_size
    want_bn = METHODS[recipe.method].samples_by_odsd(recipe.selection.sampler)  # only ODSD's closeness reads them
    pools: list[PoolScores] = []
    extras: dict[str, Any] = {}
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


def _stored_subset(
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
    train_images, train_idx = _stored_subset(run, "train", pool, selection.train_indices, spec, ctx, inputs.threads)
    hold_images, hold_idx = _stored_subset(run, "holdout", pool, selection.holdout_indices, spec, ctx, inputs.threads)
    agree_images, agree_idx = _stored_subset(
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
