"""metrics.json's schema, apart from the loop that measures it: what a finished training run reports about the
teacher, the student, the epoch kept, its label-free agreement, the selection and the run itself."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eikd_edge.agreement import ci95
from eikd_edge.distill.evaluate import pick_and_report_halves
from eikd_edge.distill.step import describe_budget
from eikd_edge.models.zoo import count_macs, count_parameters
from eikd_edge.selection import Selection

if TYPE_CHECKING:
    from eikd_edge.distill.loop import Trainer


def training_metrics(trainer: Trainer, selection: Selection, val: Path | None) -> dict[str, Any]:
    """metrics.json for `trainer`'s finished run."""
    history, recipe = trainer.history, trainer.recipe
    last = history[-1] if history else {}
    best = next((h for h in history if h["epoch"] == trainer.best["epoch"]), last)
    kept = best if recipe.train.keep == "best" else last
    return {
        "method": recipe.method,
        "teacher": _teacher(trainer),
        "student": _student(trainer, kept),
        "epochs": {
            "keep": recipe.train.keep,
            "picked_by": trainer.checked_on,
            "picked": _epoch_summary(best),
            "last": _epoch_summary(last),
        },
        "agreement": {
            **reported_agreement(trainer, kept),
            "on": "fixed field slice" if trainer.agreement_size else None,
            "selection_holdout": {"top1": _number(kept.get("holdout_agreement")), "size": trainer.holdout_size},
        },
        "seed": recipe.train.seed,
        "selection": _selection(selection),
        "train": _train(trainer),
        "history": history,
        "val": str(val) if val else None,
    }


def reported_agreement(trainer: Trainer, kept: dict[str, Any]) -> dict[str, Any]:
    """The kept epoch's agreement on images that did not choose it: the report half when the slice picked the
    epoch (train.keep=best), the whole slice when it did not (train.keep=last)."""
    size = trainer.agreement_size
    if trainer.recipe.train.keep == "best" and size >= 2 and "agreement_report" in kept:
        top1, n = _number(kept.get("agreement_report")), len(pick_and_report_halves(size)[1])
    else:
        top1, n = _number(kept.get("agreement")), size
    return {"top1": top1, "size": n, "slice_size": size, "ci95": ci95(top1, n)}


def _teacher(trainer: Trainer) -> dict[str, Any]:
    teacher = trainer.teacher
    params = teacher.num_parameters()
    return {"top1": trainer.teacher_val_top1, "params": params, "macs": teacher.macs(), "format": teacher.format}


def _student(trainer: Trainer, kept: dict[str, Any]) -> dict[str, Any]:
    student_cpu = copy.deepcopy(trainer.student).cpu()
    return {
        "arch": trainer.recipe.student.arch,
        "top1": kept.get("val_top1"),
        "params": count_parameters(student_cpu),
        "macs": count_macs(student_cpu, trainer.spec.input_size),
        "best_epoch": trainer.best["epoch"],
        "kept_epoch": trainer.kept_epoch(),
    }


def _selection(selection: Selection) -> dict[str, Any]:
    return {
        "pool_files": selection.pool.files,
        "decoded": len(selection.pool.paths),
        "selected": int(selection.selected.sum()),
        "train": len(selection.train_indices),
        "classes_below_quota": [c["name"] for c in selection.per_class if c["deficit"] > 0],
        "scoring_s": round(selection.pool.seconds, 3),
        "skipped": selection.pool.skipped.get("count", 0),
    }


def _train(trainer: Trainer) -> dict[str, Any]:
    cfg = trainer.recipe.train
    return {
        "wall_s": round(trainer.wall_s, 3),
        "images_per_s": round(trainer.images_seen / trainer.wall_s, 1) if trainer.wall_s else None,
        "steps": trainer.step,
        "batch_size": min(cfg.batch_size, trainer.n_train),
        "budget": describe_budget(cfg),
        "epochs": trainer.epochs_done(),
        "checks": len(trainer.history),
        "device": str(trainer.device),
        "world_size": trainer.ctx.world_size,
        "seed": cfg.seed,
        "param_checksum": {"initial": trainer.initial_checksum, "final": trainer.final_checksums},
    }


def _number(value: Any) -> float | None:
    """A measured share, or None where it was not measured (NaN)."""
    return None if value is None or value != value else float(value)


def _epoch_summary(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "epoch": record.get("epoch"),
        "val_top1": record.get("val_top1"),
        "agreement": _number(record.get("agreement")),
    }
