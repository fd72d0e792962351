"""The training loop's files, apart from the loop: student.pt (the kept epoch's weights, loadable alone) and
train_state.pt (everything --resume needs to carry on where the last complete round ended), both written
atomically after each round."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from eikd_edge.checkpoint import load_train_state, save_student, save_torch_atomic

if TYPE_CHECKING:
    from eikd_edge.distill.loop import Trainer


def save_round(trainer: Trainer, check: int) -> None:
    """student.pt with the kept epoch's weights, then train_state.pt with round `check`'s full state."""
    recipe = trainer.recipe
    kept_model = copy.deepcopy(trainer.student).cpu()
    if recipe.train.keep == "best":
        kept_model.load_state_dict(trainer.best["state"])
    save_student(
        trainer.run.student,
        kept_model,
        recipe.student.arch,
        trainer.arch_kwargs,
        trainer.spec,
        extra={
            "recipe": recipe.dump(),
            "teacher": {"path": str(trainer.teacher.path), "sha256": trainer.teacher.sha256},
            "best_epoch": trainer.best["epoch"],
            "kept_epoch": trainer.kept_epoch(),
            "method": recipe.method,
            **({"student_weights": trainer.student_weights} if trainer.student_weights else {}),
        },
    )
    save_torch_atomic(
        trainer.run.train_state,
        {
            "epoch": check,
            "passes_per_check": trainer.passes_per_check,
            "step": trainer.step,
            "net": trainer.net.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "history": trainer.history,
            "best": trainer.best,
            "wall_s": trainer.wall_s,
            "images_seen": trainer.images_seen,
            "scaler": trainer.scaler.state_dict(),
            "total_steps": trainer.total_steps,
            "recipe": recipe.dump(),
        },
    )


def load_round(trainer: Trainer) -> None:
    """Restore train_state.pt into `trainer`: training carries on with the round after the last one saved."""
    state = load_train_state(trainer.run.train_state, trainer.device)
    trainer.net.load_state_dict(state["net"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.history = state["history"]
    trainer.best = state["best"]
    trainer.step = state["step"]
    trainer.start_epoch = state["epoch"] + 1
    trainer.wall_s = state["wall_s"]
    trainer.images_seen = state["images_seen"]
    if isinstance(state.get("scaler"), dict) and state["scaler"]:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.total_steps = int(state.get("total_steps", trainer.total_steps))
    trainer.passes_per_check = int(state.get("passes_per_check", 1))
