"""Pieces of the training step: on-device augmentation, the LR schedule, the trainable module, the loss mix."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from eikd_edge.config import AugmentConfig, Recipe
from eikd_edge.losses import (
    NoiseAdaptation,
    class_drop_kd,
    contrastive_relation_loss,
    feature_loss,
    kept_class_mask,
    relation_loss,
    selfpaced_lambda,
    selfpaced_weights,
)
from eikd_edge.models.taps import EmbeddingHook, find_classifier


def augment(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 NCHW -> float NCHW in [0, 255]: random pad-crop, optional flip, brightness/contrast jitter."""
    x = images.float()
    batch, _, height, width = x.shape
    device = x.device
    if config.crop_pad > 0:
        pad = config.crop_pad
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=device)
        dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=device)
        rows = (torch.arange(height, device=device)[None, :] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(width, device=device)[None, :] + dx[:, None])[:, None, None, :]
        b = torch.arange(batch, device=device)[:, None, None, None]
        ch = torch.arange(3, device=device)[None, :, None, None]
        x = padded[b, ch, rows, cols]
    if config.flip:
        flip = torch.rand(batch, generator=generator, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if config.jitter > 0:
        j = config.jitter
        contrast = 1 + (torch.rand(batch, 1, 1, 1, generator=generator, device=device) * 2 - 1) * j
        brightness = 1 + (torch.rand(batch, 1, 1, 1, generator=generator, device=device) * 2 - 1) * j
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean * brightness).clamp(0, 255)
    return x


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier: linear warm-up, then cosine decay to zero at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class DistillNet(nn.Module):
    """Everything that trains: the student, the feature projector g, and DFND's noise transition."""

    def __init__(
        self, student: nn.Module, num_classes: int, teacher_dim: int, use_projector: bool, use_noise: bool
    ) -> None:
        super().__init__()
        classifier = find_classifier(student, num_classes)
        if classifier is None:
            raise ValueError("student has no final Linear classifier to tap")
        self.student = student
        self.hook = EmbeddingHook(student, classifier)
        # unused modules would stall DDP's gradient reduction, so only what the losses use is built
        self.projector = nn.Linear(classifier.embedding_dim, teacher_dim) if use_projector else None
        self.noise = NoiseAdaptation(num_classes) if use_noise else None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.student(images)
        embedding = self.hook.pop()
        return logits, embedding, self.projector(embedding) if self.projector is not None else embedding


@dataclass(frozen=True)
class LossTerms:
    total: torch.Tensor
    parts: dict[str, float]


def uses_projector(recipe: Recipe) -> bool:
    """The feature loss and the contrastive relation both compare g(f_S) with the teacher's embedding."""
    if recipe.method not in ("eikd", "random"):
        return False
    relation = recipe.loss.relation
    return recipe.loss.feature.enabled or (relation.enabled and relation.kind == "contrastive")


def distillation_loss(
    net: nn.Module,
    recipe: Recipe,
    student_logits: torch.Tensor,
    student_embedding: torch.Tensor,
    projected: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_embedding: torch.Tensor,
    progress: float = 0.0,
) -> LossTerms:
    """L = L_cd + α·L_feat + β·L_rel for EIKD (and `random`); Hinton KD for `kd`; KD + noise adaptation for `dfnd`.

    Terms are computed per sample; the batch loss is their mean, or with the self-paced curriculum the
    v-weighted mean Σ v_i ℓ_i / Σ v_i (the curriculum decides which samples count, not the step size), with v
    computed on ℓ_i / mean(ℓ) so that λ is in units of the batch's mean loss and one schedule fits any loss scale.
    """
    cfg = recipe.loss
    parts: dict[str, torch.Tensor] = {}
    eikd_like = recipe.method in ("eikd", "random")
    mask = None
    if eikd_like and cfg.class_drop.enabled:
        mask = kept_class_mask(teacher_logits, cfg.class_drop.top_k, cfg.class_drop.mass)
    parts["kd"] = class_drop_kd(
        student_logits, teacher_logits, cfg.temperature, mask, cfg.class_drop.student == "masked", reduction="none"
    )
    if eikd_like and cfg.feature.enabled and cfg.feature.weight > 0:
        parts["feature"] = cfg.feature.weight * feature_loss(projected, teacher_embedding, reduction="none")
    if eikd_like and cfg.relation.enabled and cfg.relation.weight > 0:
        if cfg.relation.kind == "contrastive":
            relation = contrastive_relation_loss(
                projected, teacher_embedding, teacher_logits, cfg.relation.temperature, reduction="none"
            )
        else:
            relation = relation_loss(student_embedding, teacher_embedding, cfg.relation.temperature, reduction="none")
        parts["relation"] = cfg.relation.weight * relation
    noise = getattr(net, "noise", None)
    if recipe.method == "dfnd" and noise is not None:
        parts["noise"] = noise(student_logits, teacher_logits, reduction="none")
    per_sample = torch.stack(list(parts.values())).sum(dim=0)
    logged = {k: float(v.detach().mean()) for k, v in parts.items()}
    curriculum = recipe.train.curriculum
    if curriculum.mode == "selfpaced":
        lam = selfpaced_lambda(progress, curriculum.lambda_start, curriculum.lambda_end, curriculum.ramp)
        relative = per_sample.detach() / per_sample.detach().mean().clamp_min(1e-12)  # λ in batch-mean units
        weights = selfpaced_weights(relative, lam)
        total = (weights * per_sample).sum() / weights.sum().clamp_min(1e-12)
        logged["curriculum_weight"] = float(weights.mean())
    else:
        total = per_sample.mean()
    return LossTerms(total, logged)
