"""The distillation stage: select from the pool, train the student against the teacher, keep the best epoch.

Checkpoints are atomic and written every epoch, so a killed run resumes (`resume=True`) from the last one.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eikd_edge import __version__
from eikd_edge.atomic import write_json_atomic, write_yaml_atomic
from eikd_edge.checkpoint import save_student, save_torch_atomic
from eikd_edge.config import Recipe
from eikd_edge.data import DecodeReport, iter_decoded, load_labeled_folder, normalize
from eikd_edge.distributed import DistContext, barrier, broadcast_object, cleanup, init_distributed
from eikd_edge.errors import EikdError, Interrupted
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import TeacherModel, load_teacher
from eikd_edge.models.zoo import build_model, count_macs, count_parameters
from eikd_edge.run import RunPaths
from eikd_edge.scoring import PoolScores, progress_bar, score_pool
from eikd_edge.selection import Selection, select
from eikd_edge.training import DistillNet, augment, distillation_loss, warmup_cosine


@dataclass(frozen=True)
class DistillInputs:
    teacher: Path
    unlabeled: Path
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
            "unlabeled": str(Path(self.unlabeled).resolve()),
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
) -> tuple[TeacherModel, Selection]:
    """Score the pool with the teacher (cached in the run folder) and write selection.json."""
    ctx = ctx or DistContext()
    device = device or resolve_device(recipe.train.device, ctx)
    teacher = (teacher or load_inputs_teacher(inputs)).to(device)
    run = RunPaths(Path(out))
    pool = score_pool(teacher, inputs.unlabeled, device, recipe.selection.batch_size, run.teacher_outputs, ctx)
    selection = select(pool, teacher.spec.classes, recipe.selection, recipe.method, recipe.train.seed)
    if ctx.is_main:
        write_json_atomic(run.selection, selection.to_json())
    return teacher, selection


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


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, spec: InputSpec, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = normalize(images[start : start + batch_size].to(device), spec)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs.append(model(batch).float().cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def _top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits.argmax(1) == targets).float().mean()) if len(targets) else float("nan")


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
    teacher, selection = run_selection(inputs, recipe, run.root, device=device, ctx=ctx)
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
    metrics = trainer.metrics(selection, inputs) if ctx.is_main else {}
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


class Trainer:
    """Holds the training state; `fit` runs epochs, evaluates label-free agreement, checkpoints each epoch."""

    def __init__(
        self,
        recipe: Recipe,
        teacher: TeacherModel,
        spec: InputSpec,
        device: torch.device,
        ctx: DistContext,
        run: RunPaths,
    ) -> None:
        self.recipe, self.teacher, self.spec, self.device, self.ctx, self.run = recipe, teacher, spec, device, ctx, run
        cfg = recipe.train
        self.arch_kwargs = {"width": recipe.student.width} if recipe.student.width != 1.0 else {}
        self.student = build_model(recipe.student.arch, teacher.num_classes, **self.arch_kwargs)
        teacher_dim = teacher.embedding_dim or teacher.num_classes
        use_projector = recipe.method in ("eikd", "random") and recipe.loss.feature.enabled
        self.net = DistillNet(self.student, teacher.num_classes, teacher_dim, use_projector, recipe.method == "dfnd")
        self.net.to(device)
        if device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)
        self.ddp: nn.Module = self.net
        if ctx.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        params = [p for p in self.net.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
            )
        else:
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"agreement": -1.0, "epoch": -1, "state": None}
        self.step = 0
        self.start_epoch = 0
        self.wall_s = 0.0
        self.images_seen = 0
        self.teacher_val_top1: float | None = None

    def configure_schedule(self, total_steps: int, warmup_steps: int) -> None:
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps)
        )

    def _schedule(self, n_train: int) -> tuple[int, int, int]:
        cfg = self.recipe.train
        global_batch = min(cfg.batch_size, n_train)
        steps_per_epoch = max(1, n_train // global_batch)
        total = cfg.steps or cfg.epochs * steps_per_epoch
        epochs = math.ceil(total / steps_per_epoch)
        return global_batch, steps_per_epoch, total if cfg.steps else epochs * steps_per_epoch

    def fit(
        self,
        pool: PoolScores,
        train_images: torch.Tensor,
        train_idx: np.ndarray,
        hold_images: torch.Tensor,
        hold_idx: np.ndarray,
        val: tuple[torch.Tensor, torch.Tensor, list[str]] | None,
        resume: bool,
    ) -> None:
        cfg = self.recipe.train
        device = self.device
        images = train_images.to(device)
        t_logits = pool.logits[torch.as_tensor(train_idx)].to(device)
        t_embed = pool.embeddings[torch.as_tensor(train_idx)].to(device)
        hold_targets = pool.logits[torch.as_tensor(hold_idx)].argmax(1) if len(hold_idx) else None
        if val is not None:
            self.teacher_val_top1 = _top1(
                predict_logits(_TeacherLogits(self.teacher), val[0], self.spec, device), val[1]
            )
        batch, steps_per_epoch, total_steps = self._schedule(len(images))
        epochs = math.ceil(total_steps / steps_per_epoch)
        self.configure_schedule(total_steps, int(cfg.warmup_epochs * steps_per_epoch))
        if resume:
            self._load_state()
        self.total_steps, self.epochs = total_steps, epochs
        per_rank = batch // self.ctx.world_size
        show = self.ctx.is_main and not os.environ.get("EIKD_NO_PROGRESS")
        with progress_bar(disable=not show) as bar:
            task = bar.add_task(f"Distilling ({self.recipe.method})", total=total_steps, completed=self.step, rate="")
            for epoch in range(self.start_epoch, epochs):
                started = time.perf_counter()
                sums: dict[str, float] = {}
                generator = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
                order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed + epoch))
                order = order.to(device)
                steps_now = min(steps_per_epoch, total_steps - self.step)
                try:
                    for i in range(steps_now):
                        ids = order[i * batch : (i + 1) * batch][self.ctx.rank :: self.ctx.world_size][:per_rank]
                        parts = self.train_step(images[ids], t_logits[ids], t_embed[ids], generator)
                        for key, value in parts.items():
                            sums[key] = sums.get(key, 0.0) + value
                        bar.update(task, advance=1, rate=f"loss {parts['total']:.3f}")
                except KeyboardInterrupt:
                    raise Interrupted(
                        f"interrupted in epoch {epoch + 1}; the checkpoint of epoch {epoch} is intact: "
                        "re-run the same command with --resume"
                    ) from None
                seconds = time.perf_counter() - started
                self.wall_s += seconds
                self.images_seen += steps_now * batch
                self._end_epoch(epoch, steps_now, sums, seconds, hold_images, hold_targets, val)

    def train_step(
        self, images: torch.Tensor, t_logits: torch.Tensor, t_embed: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        self.net.train()
        x = normalize(augment(images, self.recipe.train.augment, generator).clamp(0, 255), self.spec)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if self.recipe.train.teacher_targets == "online":
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                t_logits, t_embed = self.teacher.predict(x)
            t_logits, t_embed = t_logits.float(), t_embed.float()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits, embedding, projected = self.ddp(x)
        terms = distillation_loss(self.net, self.recipe, logits, embedding, projected, t_logits, t_embed)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"total": float(terms.total.detach()), **terms.parts}

    def _end_epoch(
        self,
        epoch: int,
        steps: int,
        sums: dict[str, float],
        seconds: float,
        hold_images: torch.Tensor,
        hold_targets: torch.Tensor | None,
        val: tuple[torch.Tensor, torch.Tensor, list[str]] | None,
    ) -> None:
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": {k: v / max(steps, 1) for k, v in sums.items()},
            "epoch_s": round(seconds, 3),
            "wall_s": round(self.wall_s, 3),
        }
        if self.ctx.is_main:
            agreement = float("nan")
            if hold_targets is not None:
                agreement = _top1(predict_logits(self.student, hold_images, self.spec, self.device), hold_targets)
            record["agreement"] = agreement
            if val is not None:
                record["val_top1"] = _top1(predict_logits(self.student, val[0], self.spec, self.device), val[1])
            score = agreement if not math.isnan(agreement) else float(epoch)
            if score >= self.best["agreement"]:
                state = {k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()}
                self.best = {"agreement": score, "epoch": epoch + 1, "state": state}
            self.history.append(record)
            self._save(epoch)
        self.best = broadcast_object(self.best, self.ctx) if self.ctx.enabled else self.best
        barrier(self.ctx)

    def _save(self, epoch: int) -> None:
        best_model = copy.deepcopy(self.student).cpu()
        best_model.load_state_dict(self.best["state"])
        save_student(
            self.run.student,
            best_model,
            self.recipe.student.arch,
            self.arch_kwargs,
            self.spec,
            extra={
                "recipe": self.recipe.dump(),
                "teacher": {"path": str(self.teacher.path), "sha256": self.teacher.sha256},
                "best_epoch": self.best["epoch"],
                "method": self.recipe.method,
            },
        )
        save_torch_atomic(
            self.run.train_state,
            {
                "epoch": epoch,
                "step": self.step,
                "net": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "history": self.history,
                "best": self.best,
                "wall_s": self.wall_s,
                "images_seen": self.images_seen,
                "recipe": self.recipe.dump(),
            },
        )

    def _load_state(self) -> None:
        state = torch.load(self.run.train_state, map_location=self.device, weights_only=True)
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        self.best = state["best"]
        self.step = state["step"]
        self.start_epoch = state["epoch"] + 1
        self.wall_s = state["wall_s"]
        self.images_seen = state["images_seen"]

    def metrics(self, selection: Selection, inputs: DistillInputs) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        best = next((h for h in self.history if h["epoch"] == self.best["epoch"]), last)
        student_cpu = copy.deepcopy(self.student).cpu()
        teacher_params = self.teacher.num_parameters()
        return {
            "method": self.recipe.method,
            "teacher": {
                "top1": self.teacher_val_top1,
                "params": teacher_params,
                "macs": self.teacher.macs(),
                "format": self.teacher.format,
            },
            "student": {
                "arch": self.recipe.student.arch,
                "top1": best.get("val_top1"),
                "params": count_parameters(student_cpu),
                "macs": count_macs(student_cpu, self.spec.input_size),
                "best_epoch": self.best["epoch"],
            },
            "agreement": {"top1": best.get("agreement"), "holdout_size": len(selection.holdout_indices)},
            "selection": {
                "pool_files": selection.pool.files,
                "decoded": len(selection.pool.paths),
                "selected": int(selection.selected.sum()),
                "train": len(selection.train_indices),
                "classes_below_quota": [c["name"] for c in selection.per_class if c["deficit"] > 0],
                "scoring_s": round(selection.pool.seconds, 3),
                "skipped": selection.pool.skipped.get("count", 0),
            },
            "train": {
                "wall_s": round(self.wall_s, 3),
                "images_per_s": round(self.images_seen / self.wall_s, 1) if self.wall_s else None,
                "steps": self.step,
                "epochs": len(self.history),
                "device": str(self.device),
                "world_size": self.ctx.world_size,
            },
            "history": self.history,
            "val": str(inputs.val) if inputs.val else None,
        }


class _TeacherLogits(nn.Module):
    """Adapter so the teacher's widened output can be evaluated like any classifier."""

    def __init__(self, teacher: TeacherModel) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.predict(x)[0]

    def train(self, mode: bool = True) -> _TeacherLogits:  # the teacher never trains
        return self
