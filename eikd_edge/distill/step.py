"""Pieces of the training step: on-device augmentation, the LR schedule, the trainable module, the loss mix."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from eikd_edge.config import AugmentConfig, Recipe, RelationConfig, TrainConfig
from eikd_edge.data import normalize
from eikd_edge.disk_images import ImageRows
from eikd_edge.distill.losses import (
    NoiseAdaptation,
    class_drop_kd,
    contrastive_relation_loss,
    feature_loss,
    kept_class_mask,
    relation_loss,
    selfpaced_lambda,
    selfpaced_weights,
)
from eikd_edge.distill.methods import METHODS
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.taps import EmbeddingHook, find_classifier


def augment(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 NCHW -> float NCHW in [0, 255]: a random crop (pad-crop for small inputs, random-resized-crop for
    large ones), optional flip, brightness/contrast jitter. Runs on the images' device."""
    x = images.float()
    if uses_resized_crop(config, x.shape[-2:]):
        x = random_resized_crop(x, config.crop_scale, generator)
    elif config.crop_pad > 0:
        x = pad_crop(x, config.crop_pad, generator)
    batch, device = x.shape[0], x.device
    if uses_flip(config, x.shape[-2:]):
        flip = torch.rand(batch, generator=generator, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if config.jitter > 0:
        j = config.jitter
        contrast = 1 + (torch.rand(batch, 1, 1, 1, generator=generator, device=device) * 2 - 1) * j
        brightness = 1 + (torch.rand(batch, 1, 1, 1, generator=generator, device=device) * 2 - 1) * j
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean * brightness).clamp(0, 255)
    return x


SMALL_INPUT = 64  # up to this side, CIFAR-style pad-crop; above it, random-resized-crop


def uses_resized_crop(config: AugmentConfig, size: tuple[int, int] | torch.Size) -> bool:
    return config.crop == "resized" or (config.crop == "auto" and min(size) > SMALL_INPUT)


def uses_flip(config: AugmentConfig, size: tuple[int, int] | torch.Size) -> bool:
    """Photos keep their label under a horizontal flip; at CIFAR sizes the inputs are often digits or glyphs."""
    return config.flip is True or (config.flip == "auto" and min(size) > SMALL_INPUT)


def pad_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by `pad` pixels and cut a random window of the original size from each image."""
    batch, _, height, width = x.shape
    device = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=device)
    rows = (torch.arange(height, device=device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(width, device=device)[None, :] + dx[:, None])[:, None, None, :]
    b = torch.arange(batch, device=device)[:, None, None, None]
    ch = torch.arange(x.shape[1], device=device)[None, :, None, None]
    return padded[b, ch, rows, cols]


def random_resized_crop(x: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Per image, a box of area share U(min_scale, 1) and aspect ratio log-U(3/4, 4/3) at a random position,
    resized back to the input size (bilinear), all images in one batched grid_sample."""
    batch, device = x.shape[0], x.device
    area = min_scale + (1 - min_scale) * torch.rand(batch, generator=generator, device=device)
    log_ratio = (torch.rand(batch, generator=generator, device=device) * 2 - 1) * math.log(4 / 3)
    ratio = log_ratio.exp()
    box_w = (area * ratio).sqrt().clamp(max=1.0)  # as shares of the width and height
    box_h = (area / ratio).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(batch, generator=generator, device=device) * 2 - 1) * (1 - box_w)
    centre_y = (torch.rand(batch, generator=generator, device=device) * 2 - 1) * (1 - box_h)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = box_w, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = box_h, centre_y
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def mix_images(x: torch.Tensor, mode: str, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Function matching (Beyer et al. 2022): mix each image with another of the batch; the teacher labels the
    result, so no label needs mixing. mixup blends whole images, cutmix pastes a box of the partner image."""
    batch = x.shape[0]
    if batch < 2:
        return x
    device = x.device
    draw = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device))
    lam = float(np.random.default_rng(draw).beta(alpha, alpha))  # seeded from the step's generator: resumable
    partner = x[torch.randperm(batch, generator=generator, device=device)]
    if mode == "mixup":
        return lam * x + (1.0 - lam) * partner
    height, width = x.shape[2:]
    cut_h, cut_w = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
    top = int(torch.randint(0, height - cut_h + 1, (1,), generator=generator, device=device))
    left = int(torch.randint(0, width - cut_w + 1, (1,), generator=generator, device=device))
    mixed = x.clone()
    mixed[:, :, top : top + cut_h, left : left + cut_w] = partner[:, :, top : top + cut_h, left : left + cut_w]
    return mixed


def default_epochs(n_train: int, batch_size: int) -> int:
    """Epochs when the user sets no budget: enough passes to reach the plateau on a small pool (at least
    MIN_DEFAULT_STEPS optimizer steps), and DEFAULT_EPOCHS passes on a large one."""
    steps_per_epoch = max(1, n_train // max(1, batch_size))
    return max(DEFAULT_EPOCHS, math.ceil(MIN_DEFAULT_STEPS / steps_per_epoch))


def passes_per_check(steps_per_epoch: int, total_steps: int) -> int:
    """Passes over the training images between two checks (agreement, precise BatchNorm, checkpoint). One on a
    normal pool; on a small one, enough that a run makes at most MAX_CHECKS checks: 255 images at batch 128
    would otherwise check after every single step and spend most of its time checking."""
    epochs = math.ceil(total_steps / max(1, steps_per_epoch))
    return max(1, math.ceil(epochs / MAX_CHECKS))


def steps_within_budget(budget_s: float, elapsed_s: float, steps_done: int) -> int:
    """Total steps that fit a wall-clock budget at the pace measured so far (never fewer than already done)."""
    if steps_done <= 0 or elapsed_s <= 0:
        return max(steps_done, 1)
    return max(steps_done, int(budget_s * steps_done / elapsed_s))


def describe_budget(cfg: TrainConfig) -> str:
    """Where the step count came from, in the words of the flag that would change it."""
    if cfg.budget is not None:
        return f"--budget {cfg.budget}"
    if cfg.steps:
        return f"train.steps={cfg.steps}"
    if cfg.epochs:
        return f"--epochs {cfg.epochs}"
    return f"default: {DEFAULT_EPOCHS} epochs, at least {MIN_DEFAULT_STEPS} steps; --epochs or --budget to change"


DEFAULT_EPOCHS = 30
MIN_DEFAULT_STEPS = 500
MAX_CHECKS = 40


def build_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over everything that trains. Weight decay would pull DFND's noise transition
    towards uniform (its logits toward zero), so that matrix is excluded from it."""
    noise = getattr(net, "noise", None)
    noise_ids = {id(p) for p in noise.parameters()} if noise is not None else set()
    trainable = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in noise_ids], "weight_decay": cfg.weight_decay}]
    if noise_ids:
        groups.append({"params": [p for p in trainable if id(p) in noise_ids], "weight_decay": 0.0})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, images: ImageRows, spec: InputSpec, count: int, batch_size: int = 256
) -> None:
    """Precise BatchNorm: re-estimate every BatchNorm's running statistics as the plain average over `count`
    training images in train mode, so eval-mode outputs match what the student learned. On short schedules (and
    with torchvision's momentum 0.01) the running averages lag far behind the weights and eval logits explode."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or count <= 0 or len(images) == 0:
        return
    momenta = [m.momentum for m in layers]
    was_training = model.training
    model.train()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch counts equally
    device = next(model.parameters()).device  # the images may stay on the host (a set read from its file)
    picks = torch.linspace(0, len(images) - 1, min(count, len(images)), device=images.device).round().long()
    subset = images[picks]  # spread over the whole (path-ordered) set, not its first folder
    for start in range(0, len(subset), batch_size):
        model(normalize(subset[start : start + batch_size].to(device).float(), spec))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    model.train(was_training)


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
    relation = recipe.loss.relation
    return METHODS[recipe.method].uses_projector(recipe.loss.feature.enabled, relation.enabled, relation.kind)


def uses_noise_adaptation(recipe: Recipe) -> bool:
    """DFND's trainable noise transition is built only for a method whose loss mix has it."""
    return METHODS[recipe.method].noise_adaptation


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
    """L = L_cd + α·L_feat + β·L_rel for EIKD (and `random`); Hinton KD for `kd`; KD + noise adaptation for `dfnd`:
    the terms each method trains with are its entry's in eikd_edge.distill.methods.

    Terms are computed per sample; the batch loss is their mean, or with the self-paced curriculum the
    v-weighted mean Σ v_i ℓ_i / Σ v_i (the curriculum decides which samples count, not the step size), with v
    computed on ℓ_i / mean(ℓ) so that λ is in units of the batch's mean loss and one schedule fits any loss scale.
    """
    cfg = recipe.loss
    parts: dict[str, torch.Tensor] = {}
    method = METHODS[recipe.method]
    mask = None
    if method.class_drop and cfg.class_drop.enabled:
        drop = cfg.class_drop
        mask = kept_class_mask(teacher_logits, drop.top_k, drop.mass, cfg.temperature, drop.min_classes)
    parts["kd"] = class_drop_kd(
        student_logits, teacher_logits, cfg.temperature, mask, cfg.class_drop.student == "masked", reduction="none"
    )
    if method.feature and cfg.feature.enabled and cfg.feature.weight > 0:
        parts["feature"] = cfg.feature.weight * feature_loss(projected, teacher_embedding, reduction="none")
    if method.relation and cfg.relation.enabled and cfg.relation.weight > 0:
        relation = _relation_term(cfg.relation, student_embedding, projected, teacher_embedding, teacher_logits)
        parts["relation"] = cfg.relation.weight * relation
    noise = getattr(net, "noise", None)
    if method.noise_adaptation and noise is not None:
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


def _relation_term(
    cfg: RelationConfig, s_embed: torch.Tensor, projected: torch.Tensor, t_embed: torch.Tensor, t_logits: torch.Tensor
) -> torch.Tensor:
    """The relation loss per sample, unweighted: ODSD's contrastive one or EIKD's relation-matrix KL."""
    if cfg.kind == "contrastive":
        return contrastive_relation_loss(projected, t_embed, t_logits, cfg.temperature, reduction="none")
    return relation_loss(s_embed, t_embed, cfg.temperature, reduction="none")
