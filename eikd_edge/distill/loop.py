"""The training loop: rounds of distillation steps (one pass over the images, or several on a small pool), then
label-free agreement and an atomic checkpoint after each round."""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eikd_edge.amp import autocast_dtype, grad_scaler
from eikd_edge.checkpoint import diverged_message
from eikd_edge.config import Recipe, parse_duration
from eikd_edge.data import normalize
from eikd_edge.disk_images import ImageRows
from eikd_edge.distill.batches import gather_batch, pass_order, stays_on_host
from eikd_edge.distill.checkpoints import load_round, save_round
from eikd_edge.distill.evaluate import (
    Checks,
    TeacherLogits,
    agreement,
    pick_score,
    predict_logits,
    slice_agreement,
    top1,
)
from eikd_edge.distill.metrics import training_metrics
from eikd_edge.distill.optim import lr_scheduler, schedule
from eikd_edge.distill.step import (
    DistillNet,
    augment,
    build_optimizer,
    distillation_loss,
    mix_images,
    passes_per_check,
    recalibrate_batchnorm,
    steps_within_budget,
    uses_noise_adaptation,
    uses_projector,
)
from eikd_edge.distributed import DistContext, barrier, broadcast_object, parameter_checksums
from eikd_edge.errors import EikdError, Interrupted
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import TeacherModel
from eikd_edge.models.zoo import build_model
from eikd_edge.run import RunPaths
from eikd_edge.scoring import PoolScores
from eikd_edge.selection import Selection
from eikd_edge.ui import progress_bar, show_progress


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
        student: nn.Module | None = None,
        student_weights: dict[str, Any] | None = None,
    ) -> None:
        """`student`: built (and pretrained) by the caller, else a fresh `recipe.student`; `student_weights`: what
        it started from, recorded in student.pt."""
        self.recipe, self.teacher, self.spec, self.device, self.ctx, self.run = recipe, teacher, spec, device, ctx, run
        cfg = recipe.train
        self.arch_kwargs = {"width": recipe.student.width} if recipe.student.width != 1.0 else {}
        if student is None:
            student = build_model(recipe.student.arch, teacher.num_classes, **self.arch_kwargs)
        self.student = student
        self.student_weights = student_weights
        self.amp = autocast_dtype(cfg.amp, device)
        self.scaler = grad_scaler(device, self.amp)
        teacher_dim = teacher.embedding_dim or teacher.num_classes
        self.net = DistillNet(
            self.student, teacher.num_classes, teacher_dim, uses_projector(recipe), uses_noise_adaptation(recipe)
        )
        self.net.to(device)
        if device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)
        self.ddp: nn.Module = self.net
        if ctx.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.optimizer = build_optimizer(self.net, cfg)
        self.initial_checksum = parameter_checksums(self.student, ctx)[0]
        self.final_checksums: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"agreement": -1.0, "epoch": -1, "state": None}
        self.checked_on: str | None = None  # what the label-free criterion was measured on
        self.agreement_size = 0
        self.holdout_size = 0
        self.step = 0
        self.start_epoch = 0
        self.wall_s = 0.0
        self.images_seen = 0
        self.teacher_val_top1: float | None = None
        self.total_steps = 0
        self.n_train = 0
        self.steps_per_epoch = 1
        self.passes_per_check = 1

    def configure_schedule(self, warmup_steps: int) -> None:
        """Warm-up + cosine over `self.total_steps`, read at every step so a wall-clock budget can set it late."""
        self.scheduler = lr_scheduler(self.optimizer, lambda: self.total_steps, warmup_steps)

    def fit(
        self,
        pool: PoolScores,
        train_images: ImageRows,
        train_idx: np.ndarray,
        checks: Checks,
        val: tuple[torch.Tensor, torch.Tensor, list[str]] | None,
        resume: bool,
    ) -> None:
        cfg = self.recipe.train
        device = self.device
        images = train_images if stays_on_host(train_images, device) else train_images[:].to(device)
        self._train_images = images  # every rank holds the same set: BatchNorm re-estimation agrees across ranks
        t_logits = pool.logits[torch.as_tensor(train_idx)].to(device)
        t_embed = pool.embeddings[torch.as_tensor(train_idx)].to(device)
        self._set_checks(pool, checks, val)
        self.n_train = len(images)
        batch, steps_per_epoch, total_steps = schedule(cfg, len(images))
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.passes_per_check = passes_per_check(steps_per_epoch, total_steps)
        self.configure_schedule(int(cfg.warmup_epochs * steps_per_epoch))
        if resume:
            load_round(self)
        with progress_bar(disable=not show_progress(self.ctx.is_main)) as bar:
            task = bar.add_task(f"Distilling ({self.recipe.method})", total=total_steps, completed=self.step, rate="")
            check = self.start_epoch
            while self.step < self.total_steps:
                try:
                    self._run_epoch(check, images, t_logits, t_embed, batch, bar, task)
                    self._end_epoch(check, val)
                except KeyboardInterrupt:  # checkpoints are atomic: the last complete one is intact
                    raise Interrupted(
                        f"interrupted in epoch {self.step // steps_per_epoch + 1}; the last checkpoint written is "
                        "intact: re-run the same command with --resume"
                    ) from None
                if check == self.start_epoch and cfg.budget is not None:
                    self._fit_budget(parse_duration(cfg.budget), bar, task)
                check += 1
        self.final_checksums = parameter_checksums(self.student, self.ctx)
        if len(set(self.final_checksums)) > 1:  # a broken DDP set-up would otherwise ship rank 0's private model
            raise RuntimeError(f"training ranks hold different weights: {self.final_checksums}")

    def _set_checks(
        self, pool: PoolScores, checks: Checks, val: tuple[torch.Tensor, torch.Tensor, list[str]] | None
    ) -> None:
        """What each round is checked on: the teacher's labels for the agreement slice and the holdout, and
        the teacher's own validation top-1 to compare the student's with."""
        self._checks = checks
        self._hold_targets = pool.logits[torch.as_tensor(checks.hold_idx)].argmax(1) if len(checks.hold_idx) else None
        self._agree_targets = (
            pool.logits[torch.as_tensor(checks.agree_idx)].argmax(1) if len(checks.agree_idx) else None
        )
        self.agreement_size, self.holdout_size = len(checks.agree_idx), len(checks.hold_idx)
        self.checked_on = (
            "fixed field slice" if self.agreement_size else "selection holdout" if self.holdout_size else None
        )
        if val is not None:
            self.teacher_val_top1 = top1(
                predict_logits(TeacherLogits(self.teacher), val[0], self.spec, self.device), val[1]
            )

    def _fit_budget(self, budget_s: float, bar: Any, task: Any) -> None:
        """A wall-clock budget becomes a step count once one epoch has been timed (same on every rank)."""
        steps = steps_within_budget(budget_s, self.wall_s, self.step)
        steps = int(broadcast_object(steps, self.ctx)) if self.ctx.enabled else steps
        self.total_steps = steps
        bar.update(task, total=steps)

    def _run_epoch(
        self,
        check: int,
        images: ImageRows,
        t_logits: torch.Tensor,
        t_embed: torch.Tensor,
        batch: int,
        bar: Any,
        task: Any,
    ) -> None:
        cfg = self.recipe.train
        started = time.perf_counter()
        sums: dict[str, float] = {}
        first_pass = check * self.passes_per_check
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed * 100_003 + first_pass)
        used = self.steps_per_epoch * batch  # whole batches of each pass
        order = pass_order(cfg.seed, first_pass, self.passes_per_check, used, len(images), self.device)
        steps_now = min(self.steps_per_epoch * self.passes_per_check, self.total_steps - self.step)
        per_rank = batch // self.ctx.world_size
        for i in range(steps_now):
            ids = order[i * batch : (i + 1) * batch][self.ctx.rank :: self.ctx.world_size][:per_rank]
            parts = self.train_step(gather_batch(images, ids, self.device), t_logits[ids], t_embed[ids], generator)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.update(task, advance=1, rate=f"loss {parts['total']:.3f}")
        seconds = time.perf_counter() - started
        self.wall_s += seconds
        self.images_seen += steps_now * batch
        self._epoch_record = {
            "epoch": math.ceil(self.step / self.steps_per_epoch),  # passes so far, also after several per round
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": {k: v / max(steps_now, 1) for k, v in sums.items()},
            "epoch_s": round(seconds, 3),
            "wall_s": round(self.wall_s, 3),
        }

    def train_step(
        self, images: torch.Tensor, t_logits: torch.Tensor, t_embed: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        self.net.train()
        x = augment(images, self.recipe.train.augment, generator).clamp(0, 255)
        if self.recipe.train.mix != "none":
            x = mix_images(x, self.recipe.train.mix, self.recipe.train.mix_alpha, generator)
        x = normalize(x, self.spec)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if self.recipe.train.teacher_targets == "online":
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                t_logits, t_embed = self.teacher.predict(x)
            t_logits, t_embed = t_logits.float(), t_embed.float()
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            logits, embedding, projected = self.ddp(x)
        progress = self.step / max(1, self.total_steps)
        terms = distillation_loss(self.net, self.recipe, logits, embedding, projected, t_logits, t_embed, progress)
        total = float(terms.total.detach())  # one host sync per step, for the check and the log
        if not math.isfinite(total):  # one more step would write NaN weights; the last checkpoint is finite
            raise EikdError(diverged_message(self.step, self.recipe.train.lr, self.run))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return {"total": total, **terms.parts}

    def _end_epoch(self, check: int, val: tuple[torch.Tensor, torch.Tensor, list[str]] | None) -> None:
        record = self._epoch_record
        recalibrate_batchnorm(self.student, self._train_images, self.spec, self.recipe.train.precise_bn)
        if self.ctx.is_main:
            checks, spec, device = self._checks, self.spec, self.device
            record.update(slice_agreement(self.student, checks.agree_images, self._agree_targets, spec, device))
            record["holdout_agreement"] = agreement(self.student, checks.hold_images, self._hold_targets, spec, device)
            if val is not None:
                record["val_top1"] = top1(predict_logits(self.student, val[0], spec, device), val[1])
            score = pick_score(record, self.agreement_size > 0, check)
            if score >= self.best["agreement"]:
                state = {k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()}
                self.best = {"agreement": score, "epoch": record["epoch"], "state": state}
            self.history.append(record)
            save_round(self, check)
        self.best = broadcast_object(self.best, self.ctx) if self.ctx.enabled else self.best
        barrier(self.ctx)

    def kept_epoch(self) -> int:
        """The epoch student.pt holds: the label-free pick (train.keep=best) or the last one (train.keep=last)."""
        return self.best["epoch"] if self.recipe.train.keep == "best" else self.epochs_done()

    def epochs_done(self) -> int:
        """Passes over the training images so far (the last round's record holds the count)."""
        return int(self.history[-1]["epoch"]) if self.history else 0

    def release(self) -> None:
        """Drop the DDP wrapper now: left to the garbage collector, it can outlive the process group and abort
        the process at exit (seen with gloo)."""
        self.ddp = self.net
        gc.collect()

    def metrics(self, selection: Selection, val: Path | None) -> dict[str, Any]:
        """metrics.json for the finished run (its schema: distill/metrics.py)."""
        return training_metrics(self, selection, val)
