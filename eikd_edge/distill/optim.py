"""The training schedule, apart from the loop that follows it: how many images a step takes, how many steps make
a pass and the whole run, and the warm-up + cosine learning rate over those steps."""

from __future__ import annotations

from collections.abc import Callable

import torch

from eikd_edge.config import TrainConfig
from eikd_edge.distill.step import default_epochs, warmup_cosine


def schedule(cfg: TrainConfig, n_train: int) -> tuple[int, int, int]:
    """(global batch, steps per pass, total steps) for `n_train` images: train.steps when set, else train.epochs
    passes (or the default for the set's size)."""
    global_batch = min(cfg.batch_size, n_train)
    steps_per_epoch = max(1, n_train // global_batch)
    if cfg.steps:
        return global_batch, steps_per_epoch, cfg.steps
    epochs = cfg.epochs or default_epochs(n_train, global_batch)
    return global_batch, steps_per_epoch, epochs * steps_per_epoch


def lr_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: Callable[[], int], warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine over `total_steps()`, read at every step so a wall-clock budget can set it late."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps(), warmup_steps))
