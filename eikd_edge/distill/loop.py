"""The training loop: rounds of distillation steps (one pass over the images, or several on a small pool), then
label-free agreement and an atomic checkpoint after each round."""

from __future__ import annotations

import copy
import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eikd_edge.agreement import ci95
from eikd_edge.amp import autocast_dtype, grad_scaler
from eikd_edge.checkpoint import diverged_message, load_train_state, save_student, save_torch_atomic
from eikd_edge.config import Recipe, parse_duration
from eikd_edge.data import normalize
from eikd_edge.disk_images import ImageRows
from eikd_edge.distill.step import (
    DistillNet,
    augment,
    build_optimizer,
    default_epochs,
    describe_budget,
    distillation_loss,
    mix_images,
    passes_per_check,
    recalibrate_batchnorm,
    steps_within_budget,
    uses_noise_adaptation,
    uses_projector,
    warmup_cosine,
)
from eikd_edge.distributed import DistContext, barrier, broadcast_object, parameter_checksums
from eikd_edge.errors import EikdError, Interrupted
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import TeacherModel
from eikd_edge.models.zoo import build_model, count_macs, count_parameters
from eikd_edge.run import RunPaths
from eikd_edge.scoring import PoolScores
from eikd_edge.selection import Selection
from eikd_edge.ui import progress_bar, show_progress


def stays_on_host(images: ImageRows, device: torch.device) -> bool:
    """A set larger than a quarter of the accelerator's free memory is read from the host (its file in the run
    folder) batch by batch; a smaller one is copied to the device once, where gathering a batch costs nothing."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() > free // 4


def gather_batch(images: ImageRows, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One batch on the device: gathered where the images live; from the host through pinned memory, so the
    copy runs asynchronously with the work already queued on the device."""
    if images.device.type == device.type:
        return images[ids.to(images.device)]
    return images[ids.cpu()].pin_memory().to(device, non_blocking=True)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: ImageRows, spec: InputSpec, device: torch.device, batch_size: int = 512
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


@dataclass(frozen=True)
class Checks:
    """The images each epoch is checked on, never trained on: the fixed agreement slice of the whole pool (the
    label-free criterion) and the selection's own held-out share (a diagnostic only: it flatters selective
    methods, whose held-out images are the ones the teacher is surest of)."""

    hold_images: ImageRows
    hold_idx: np.ndarray
    agree_images: ImageRows
    agree_idx: np.ndarray


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
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, self.total_steps, warmup_steps)
        )

    def _schedule(self, n_train: int) -> tuple[int, int, int]:
        cfg = self.recipe.train
        global_batch = min(cfg.batch_size, n_train)
        steps_per_epoch = max(1, n_train // global_batch)
        if cfg.steps:
            return global_batch, steps_per_epoch, cfg.steps
        epochs = cfg.epochs or default_epochs(n_train, global_batch)
        return global_batch, steps_per_epoch, epochs * steps_per_epoch

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
            self.teacher_val_top1 = _top1(
                predict_logits(_TeacherLogits(self.teacher), val[0], self.spec, device), val[1]
            )
        self.n_train = len(images)
        batch, steps_per_epoch, total_steps = self._schedule(len(images))
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.passes_per_check = passes_per_check(steps_per_epoch, total_steps)
        self.configure_schedule(int(cfg.warmup_epochs * steps_per_epoch))
        if resume:
            self._load_state()
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

    def _fit_budget(self, budget_s: float, bar: Any, task: Any) -> None:
        """A wall-clock budget becomes a step count once one epoch has been timed (same on every rank)."""
        steps = steps_within_budget(budget_s, self.wall_s, self.step)
        steps = int(broadcast_object(steps, self.ctx)) if self.ctx.enabled else steps
        self.total_steps = steps
        bar.update(task, total=steps)

    def _pass_order(self, first_pass: int, n_images: int, batch: int) -> torch.Tensor:
        """The round's image order: one shuffle per pass, each cut to its whole batches (the last partial batch
        of a pass is dropped, as a one-pass round drops it)."""
        seed, used = self.recipe.train.seed, self.steps_per_epoch * batch
        shuffles = [
            torch.randperm(n_images, generator=torch.Generator().manual_seed(seed + first_pass + j))[:used]
            for j in range(self.passes_per_check)
        ]
        return torch.cat(shuffles).to(self.device)

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
        order = self._pass_order(first_pass, len(images), batch)
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

    def _agreement(self, images: ImageRows, targets: torch.Tensor | None) -> float:
        if targets is None:
            return float("nan")
        return _top1(predict_logits(self.student, images, self.spec, self.device), targets)

    def _slice_agreement(self, record: dict[str, Any]) -> None:
        """Agreement on the fixed slice, whole and per half: the epoch is picked on one half and reported on the
        other, so the reported share is not the best of many noisy looks at the same images (the pick's
        winner's curse read 85% where the last epochs measured 75-78% on a 224-px run)."""
        targets = self._agree_targets
        if targets is None:
            record["agreement"] = record["agreement_pick"] = record["agreement_report"] = float("nan")
            return
        hits = predict_logits(self.student, self._checks.agree_images, self.spec, self.device).argmax(1) == targets
        pick, report = pick_and_report_halves(len(hits))
        record["agreement"] = hits.float().mean().item()
        record["agreement_pick"] = hits[pick].float().mean().item() if len(pick) else float("nan")
        record["agreement_report"] = hits[report].float().mean().item() if len(report) else float("nan")

    def _end_epoch(self, check: int, val: tuple[torch.Tensor, torch.Tensor, list[str]] | None) -> None:
        record = self._epoch_record
        recalibrate_batchnorm(self.student, self._train_images, self.spec, self.recipe.train.precise_bn)
        if self.ctx.is_main:
            self._slice_agreement(record)
            record["holdout_agreement"] = self._agreement(self._checks.hold_images, self._hold_targets)
            if val is not None:
                record["val_top1"] = _top1(predict_logits(self.student, val[0], self.spec, self.device), val[1])
            score = pick_score(record, self.agreement_size > 0, check)
            if score >= self.best["agreement"]:
                state = {k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()}
                self.best = {"agreement": score, "epoch": record["epoch"], "state": state}
            self.history.append(record)
            self._save(check)
        self.best = broadcast_object(self.best, self.ctx) if self.ctx.enabled else self.best
        barrier(self.ctx)

    def _reported_agreement(self, kept: dict[str, Any]) -> dict[str, Any]:
        """The kept epoch's agreement on images that did not choose it: the report half when the slice picked the
        epoch (train.keep=best), the whole slice when it did not (train.keep=last)."""
        if self.recipe.train.keep == "best" and self.agreement_size >= 2 and "agreement_report" in kept:
            top1, size = _number(kept.get("agreement_report")), len(pick_and_report_halves(self.agreement_size)[1])
        else:
            top1, size = _number(kept.get("agreement")), self.agreement_size
        return {"top1": top1, "size": size, "slice_size": self.agreement_size, "ci95": ci95(top1, size)}

    def kept_epoch(self) -> int:
        """The epoch student.pt holds: the label-free pick (train.keep=best) or the last one (train.keep=last)."""
        return self.best["epoch"] if self.recipe.train.keep == "best" else self.epochs_done()

    def epochs_done(self) -> int:
        """Passes over the training images so far (the last round's record holds the count)."""
        return int(self.history[-1]["epoch"]) if self.history else 0

    def _save(self, check: int) -> None:
        kept_model = copy.deepcopy(self.student).cpu()
        if self.recipe.train.keep == "best":
            kept_model.load_state_dict(self.best["state"])
        save_student(
            self.run.student,
            kept_model,
            self.recipe.student.arch,
            self.arch_kwargs,
            self.spec,
            extra={
                "recipe": self.recipe.dump(),
                "teacher": {"path": str(self.teacher.path), "sha256": self.teacher.sha256},
                "best_epoch": self.best["epoch"],
                "kept_epoch": self.kept_epoch(),
                "method": self.recipe.method,
                **({"student_weights": self.student_weights} if self.student_weights else {}),
            },
        )
        save_torch_atomic(
            self.run.train_state,
            {
                "epoch": check,
                "passes_per_check": self.passes_per_check,
                "step": self.step,
                "net": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "history": self.history,
                "best": self.best,
                "wall_s": self.wall_s,
                "images_seen": self.images_seen,
                "scaler": self.scaler.state_dict(),
                "total_steps": self.total_steps,
                "recipe": self.recipe.dump(),
            },
        )

    def _load_state(self) -> None:
        state = load_train_state(self.run.train_state, self.device)
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        self.best = state["best"]
        self.step = state["step"]
        self.start_epoch = state["epoch"] + 1
        self.wall_s = state["wall_s"]
        self.images_seen = state["images_seen"]
        if isinstance(state.get("scaler"), dict) and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.total_steps = int(state.get("total_steps", self.total_steps))
        self.passes_per_check = int(state.get("passes_per_check", 1))

    def release(self) -> None:
        """Drop the DDP wrapper now: left to the garbage collector, it can outlive the process group and abort
        the process at exit (seen with gloo)."""
        self.ddp = self.net
        gc.collect()

    def metrics(self, selection: Selection, val: Path | None) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        best = next((h for h in self.history if h["epoch"] == self.best["epoch"]), last)
        kept = best if self.recipe.train.keep == "best" else last
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
                "top1": kept.get("val_top1"),
                "params": count_parameters(student_cpu),
                "macs": count_macs(student_cpu, self.spec.input_size),
                "best_epoch": self.best["epoch"],
                "kept_epoch": self.kept_epoch(),
            },
            "epochs": {
                "keep": self.recipe.train.keep,
                "picked_by": self.checked_on,
                "picked": _epoch_summary(best),
                "last": _epoch_summary(last),
            },
            "agreement": {
                **self._reported_agreement(kept),
                "on": "fixed field slice" if self.agreement_size else None,
                "selection_holdout": {"top1": _number(kept.get("holdout_agreement")), "size": self.holdout_size},
            },
            "seed": self.recipe.train.seed,
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
                "batch_size": min(self.recipe.train.batch_size, self.n_train),
                "budget": describe_budget(self.recipe.train),
                "epochs": self.epochs_done(),
                "checks": len(self.history),
                "device": str(self.device),
                "world_size": self.ctx.world_size,
                "seed": self.recipe.train.seed,
                "param_checksum": {"initial": self.initial_checksum, "final": self.final_checksums},
            },
            "history": self.history,
            "val": str(val) if val else None,
        }


def pick_score(record: dict[str, Any], on_slice: bool, epoch: int) -> float:
    """What the label-free pick maximises: agreement on the slice's picking half (the selection's holdout when
    there is no slice); without either, the epoch number, so the last epoch is kept."""
    agreement = record["agreement_pick"] if on_slice else record["holdout_agreement"]
    return agreement if not math.isnan(agreement) else float(epoch)


def pick_and_report_halves(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the slice that pick the epoch (even) and that report its agreement (odd). A slice of one
    image cannot be split: it both picks and reports."""
    positions = torch.arange(size)
    if size < 2:
        return positions, positions
    return positions[0::2], positions[1::2]


def _number(value: Any) -> float | None:
    """A measured share, or None where it was not measured (NaN)."""
    return None if value is None or value != value else float(value)


def _epoch_summary(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "epoch": record.get("epoch"),
        "val_top1": record.get("val_top1"),
        "agreement": _number(record.get("agreement")),
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
