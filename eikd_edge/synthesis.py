"""Data-free transfer-set synthesis for scarce field data ("Data-Free Knowledge Distillation with Soft Targeted
Transfer Set Synthesis", Z. Wang, AAAI 2021).

The teacher's penultimate feature space is modelled as a multivariate normal built from its classifier: with
W̃ the classifier rows normalised to unit length, a feature for class c is f = α·w̃_c + σ·ε (ε ~ N(0, I)), so its
normalised logits z = W̃f follow N(α·S_c, σ²·S) where S = W̃W̃ᵀ is the class-similarity matrix: similar classes
share probability and noise. Soft targets softmax(z) are sampled from it, and images are optimised with Adam on
the pixels until the teacher reproduces them, under a BatchNorm-statistics prior (where the teacher exposes its
BatchNorm layers), a smoothness (total-variation) prior and a small pixel-norm prior.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from eikd_edge.atomic import write_atomic, write_json_atomic
from eikd_edge.config import SynthesisConfig
from eikd_edge.errors import EikdError
from eikd_edge.models.bn_stats import BatchNormTaps, batch_statistics_loss, batchnorm_layers
from eikd_edge.models.teacher import TeacherModel

MANIFEST = "synthesis.json"
IMAGE_PATTERN = "synth_{:06d}.png"


def sample_normalised_logits(
    classifier_weight: torch.Tensor,
    target_classes: torch.Tensor,
    scale: float,
    noise: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """[N, C] z = W̃(α·w̃_c + σ·ε), one per requested class c: z ~ N(α·S_c, σ²·S)."""
    normed = F.normalize(classifier_weight.float(), dim=1)
    features = scale * normed[target_classes]
    if noise > 0:
        features = features + noise * torch.randn(features.shape, generator=generator)
    return features @ normed.T


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels: large for noise, small for smooth images."""
    dx = images[..., :, 1:] - images[..., :, :-1]
    dy = images[..., 1:, :] - images[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(targets ‖ softmax(logits)), batch mean: 0 when the teacher reproduces the soft targets exactly."""
    log_q = F.log_softmax(logits.float(), dim=1)
    terms = torch.where(targets > 0, targets * (targets.clamp_min(1e-12).log() - log_q), torch.zeros_like(targets))
    return terms.sum(dim=1).mean()


def balanced_classes(count: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Every class equally often (±1), in a seeded random order."""
    classes = torch.arange(count) % num_classes
    return classes[torch.randperm(count, generator=generator)]


@dataclass(frozen=True)
class SynthesisResult:
    folder: Path
    count: int
    reused: bool
    seconds: float  # of the synthesis itself, also when an earlier one is reused
    fit: float  # share of images whose teacher top-1 is the target class
    bn_prior: bool


def _denormalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalised NCHW float -> NHWC uint8, the inverse of `data.normalize`."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    pixels = ((images * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _jitter(images: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """A random shift of a few pixels per step, so the images do not over-fit one exact alignment."""
    if pixels <= 0:
        return images
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    return torch.roll(images, shifts=(dy, dx), dims=(2, 3))


def optimise_batch(
    teacher: TeacherModel,
    targets: torch.Tensor,
    config: SynthesisConfig,
    generator: torch.Generator,
    device: torch.device,
    on_step: Callable[[float], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on the pixels of len(targets) images; returns (normalised images, the teacher's final logits)."""
    h, w = teacher.spec.input_size
    cpu_generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    start = torch.randn(len(targets), 3, h, w, generator=cpu_generator)
    images = start.to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([images], lr=config.lr)
    targets = targets.to(device)
    taps = BatchNormTaps(teacher.module) if config.bn_weight > 0 else None
    teacher.module.eval()
    try:
        for _ in range(config.steps):
            optimizer.zero_grad(set_to_none=True)
            logits = teacher.forward_logits(_jitter(images, cpu_generator))
            loss = soft_target_loss(logits, targets)
            if taps:
                loss = loss + config.bn_weight * batch_statistics_loss(taps.pop())
            loss = loss + config.tv_weight * total_variation(images) + config.l2_weight * images.pow(2).mean()
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(float(loss.detach()))
        with torch.no_grad():
            final_logits = teacher.forward_logits(images)
            if taps:
                taps.pop()
    finally:
        if taps is not None:
            taps.remove()
    return images.detach(), final_logits


def _manifest_key(teacher: TeacherModel, config: SynthesisConfig, count: int) -> dict[str, Any]:
    settings = config.model_dump(mode="json")
    settings.pop("count", None)
    return {"teacher_sha256": teacher.sha256, "settings": settings, "count": count}


def existing_synthesis(folder: Path, teacher: TeacherModel, config: SynthesisConfig, count: int) -> bool:
    """True when `folder` already holds a complete synthesis with this teacher and these settings."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    key = _manifest_key(teacher, config, count)
    if any(data.get(k) != v for k, v in key.items()):
        return False
    return all((folder / entry["path"]).is_file() for entry in data.get("images", []))


def clear_synthesis(folder: Path) -> None:
    """Remove only what a synthesis wrote (its images and manifest), never anything else in the folder."""
    for path in folder.glob("synth_*.png"):
        path.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)


def check_output_folder(folder: Path, overwrite: bool) -> None:
    """A folder with someone else's files is refused; an earlier synthesis is replaced only with --overwrite."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise EikdError(f"{folder} is a file; give a folder for the synthetic images")
    ours = {p.name for p in folder.glob("synth_*.png")} | ({MANIFEST} if (folder / MANIFEST).exists() else set())
    others = [p.name for p in folder.iterdir() if p.name not in ours and not p.name.startswith(".synth_")]
    if others:
        raise EikdError(f"{folder} holds other files (e.g. {others[0]}); synthesise into a new or empty folder")
    if ours and not overwrite:
        raise EikdError(f"{folder} already holds synthetic images; use --overwrite to replace them")


def synthesize(
    teacher: TeacherModel,
    count: int,
    config: SynthesisConfig,
    folder: Path,
    device: torch.device,
    progress: Any | None = None,
) -> SynthesisResult:
    """Write `count` synthetic images and synthesis.json (written last: its presence means complete)."""
    _check_synthesizable(teacher, count)
    if existing_synthesis(folder, teacher, config, count):
        done = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        fit, prior = float(done["teacher_fit"]), bool(done["bn_prior"])
        return SynthesisResult(folder, count, True, float(done["seconds"]), fit, prior)
    folder.mkdir(parents=True, exist_ok=True)
    clear_synthesis(folder)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    weight = teacher.classifier_weight.cpu()
    wanted = balanced_classes(count, teacher.num_classes, generator)
    bn_prior = config.bn_weight > 0 and bool(batchnorm_layers(teacher.module))
    teacher = teacher.to(device)
    entries: list[dict[str, Any]] = []
    batches = range(0, count, config.batch_size)
    step_done = _progress_callback(progress, len(batches) * config.steps)
    for start in batches:
        classes = wanted[start : start + config.batch_size]
        z = sample_normalised_logits(weight, classes, config.target_scale, config.noise, generator)
        targets = z.softmax(dim=1)  # the soft targets the teacher is asked to reproduce
        images, logits = optimise_batch(teacher, targets, config, generator, device, step_done)
        entries.extend(_write_batch(folder, teacher, start, classes, targets, images, logits))
    seconds = time.perf_counter() - started
    fit = float(np.mean([e["target_class"] == e["teacher_class"] for e in entries]))
    write_json_atomic(
        folder / MANIFEST,
        {
            **_manifest_key(teacher, config, count),
            "method": "soft-targeted transfer-set synthesis (Z. Wang, AAAI 2021)",
            "bn_prior": bn_prior,
            "seconds": round(seconds, 3),
            "device": str(device),
            "teacher_fit": round(fit, 4),
            "images": entries,
        },
    )
    return SynthesisResult(folder, count, False, seconds, fit, bn_prior)


def _progress_callback(progress: Any | None, total: int) -> Callable[[float], None]:
    """What each optimisation step calls: advances the progress bar (when there is one) with the step's loss."""
    task = progress.add_task("Synthesising images", total=total, rate="") if progress else None

    def step_done(loss: float) -> None:
        if progress is not None:
            progress.update(task, advance=1, rate=f"loss {loss:.3f}")

    return step_done


def _check_synthesizable(teacher: TeacherModel, count: int) -> None:
    if count <= 0:
        raise EikdError("--count must be at least 1")
    if teacher.classifier_weight is None:
        raise EikdError(
            f"teacher {teacher.path.name} has no final Linear classifier to model its feature space; "
            "synthesis needs one"
        )


def _write_batch(
    folder: Path,
    teacher: TeacherModel,
    start: int,
    classes: torch.Tensor,
    targets: torch.Tensor,
    images: torch.Tensor,
    logits: torch.Tensor,
) -> list[dict[str, Any]]:
    """One optimised batch written as PNG files (numbered from `start`), and synthesis.json's entries for it."""
    entries: list[dict[str, Any]] = []
    probs = logits.softmax(dim=1).cpu()
    pixels = _denormalise(images, teacher.spec.mean, teacher.spec.std)
    for offset, array in enumerate(pixels):
        index = start + offset
        name = IMAGE_PATTERN.format(index)
        write_atomic(folder / name, lambda tmp, a=array: Image.fromarray(a).save(tmp, format="PNG"))
        entries.append({
            "path": name,
            "target_class": teacher.spec.classes[int(classes[offset])],
            "target_probability": round(float(targets[offset, classes[offset]]), 4),
            "teacher_class": teacher.spec.classes[int(probs[offset].argmax())],
            "teacher_probability": round(float(probs[offset].max()), 4),
        })  # fmt: skip
    return entries
