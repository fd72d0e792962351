"""Pieces every benchmark task builder shares: PNG writing, the truth file, teacher training, saving and scoring.

A task folder holds `teacher.pt2` + `teacher.yaml`, `train/` (the teacher's own training images, kept so leak
checks can prove the field pool holds none of them), `val/` (labeled ImageFolder), `field/` (unlabeled) and
`field_truth.csv` (path,kind,label,source: for scoring only, the tool never reads it).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
import time
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from eikd_edge.data import DecodeReport, iter_decoded, load_labeled_folder, normalize
from eikd_edge.distill.step import warmup_cosine
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import load_teacher
from eikd_edge.models.zoo import build_model

ROOT = Path(__file__).resolve().parents[1]
TEACHER_ARCH = "cifar_resnet20"
TRUTH_FIELDS = ("path", "kind", "label", "source")
KINDS = ("in-class", "distractor", "noise")

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@cache
def digits_builder() -> ModuleType:
    """The bundled example's builder (examples/digits/build.py), imported by path: its renderers are reused."""
    path = ROOT / "examples" / "digits" / "build.py"
    spec = importlib.util.spec_from_file_location("eikd_digits_example_build", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def log(message: str) -> None:
    print(message, flush=True)


def to_u8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> None:
    """uint8 HxW (grey) or HxWx3 (RGB) as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", optimize=False)


def write_image_folder(root: Path, images: np.ndarray, labels: Iterable[str]) -> dict[str, int]:
    """An ImageFolder (root/<class>/NNNNN.png); returns the per-class counts."""
    counts: dict[str, int] = {}
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        write_png(root / label / f"{index:05d}.png", pixels)
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def write_field(root: Path, items: list[dict[str, Any]]) -> dict[str, int]:
    """root/field/NNNNNN.png in the (already shuffled) item order, and root/field_truth.csv."""
    rows = []
    for index, item in enumerate(items):
        name = f"{index:06d}.png"
        write_png(root / "field" / name, item["pixels"])
        rows.append({"path": name, "kind": item["kind"], "label": item.get("label", ""), "source": item["source"]})
    with open(root / "field_truth.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*TRUTH_FIELDS, *_extra_fields(items)], lineterminator="\n")
        writer.writeheader()
        for row, item in zip(rows, items, strict=True):
            writer.writerow({**row, **{k: item[k] for k in _extra_fields(items)}})
    return {kind: sum(1 for item in items if item["kind"] == kind) for kind in KINDS}


def _extra_fields(items: list[dict[str, Any]]) -> list[str]:
    known = {*TRUTH_FIELDS, "pixels"}
    return sorted({k for item in items for k in item if k not in known})


def read_truth(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def pixel_hash(pixels: np.ndarray | torch.Tensor) -> str:
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def channel_stats(pixels: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std (0..1) of uint8 [N, 3, H, W] pixels, rounded for the sidecar."""
    values = pixels.astype(np.float64) / 255.0
    mean = tuple(round(float(v), 4) for v in values.mean(axis=(0, 2, 3)))
    std = tuple(round(float(v), 4) for v in values.std(axis=(0, 2, 3)))
    return mean, std


# ------------------------------------------------------------------------------------------------ teacher


def crop_flip(pad: int, flip: bool) -> Augment:
    """Pad-and-random-crop (+ horizontal flip) on float 0..255 pixels."""

    def augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, height, width = batch.shape
        padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        out = torch.stack([padded[i, :, dy[i] : dy[i] + height, dx[i] : dx[i] + width] for i in range(n)])
        if flip:
            mirror = torch.rand(n, generator=gen) < 0.5
            out[mirror] = out[mirror].flip(-1)
        return out

    return augment


def train_teacher(
    pixels: torch.Tensor,
    labels: torch.Tensor,
    spec: InputSpec,
    epochs: int,
    seed: int,
    augment: Augment,
    arch: str = TEACHER_ARCH,
) -> torch.nn.Module:
    """`arch` (cifar_resnet20 unless named) by SGD + warm-up/cosine, single-threaded so the weights are the same
    on any CPU. epochs=0 returns the untrained network (structure tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = build_model(arch, len(spec.classes))
        if epochs > 0:
            _fit(model, pixels.float(), labels, spec, epochs, seed, augment)
        return model.eval()
    finally:
        torch.set_num_threads(threads)


def _fit(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: InputSpec,
    epochs: int,
    seed: int,
    augment: Augment,
) -> None:
    batch_size = 64
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        started, order, losses = time.perf_counter(), torch.randperm(len(labels), generator=gen), []
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = normalize(augment(images[index], gen), spec)
            loss = F.cross_entropy(model(batch), labels[index], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        mean_loss = sum(losses) / len(losses)
        log(f"  teacher epoch {epoch + 1}/{epochs}: loss {mean_loss:.3f} ({time.perf_counter() - started:.1f}s)")


def save_teacher(model: torch.nn.Module, out: Path, spec: InputSpec) -> Path:
    """A torch.export program (teacher.pt2, dynamic batch) and its sidecar teacher.yaml (with `arch:`)."""
    example = torch.zeros(2, 3, *spec.input_size)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = out / "teacher.pt2"
    torch.export.save(program, str(path))
    sidecar = {
        "input_size": list(spec.input_size),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "classes": list(spec.classes),
        "arch": TEACHER_ARCH,
    }
    (out / "teacher.yaml").write_text(yaml.safe_dump(sidecar, sort_keys=False, default_flow_style=None))
    return path


# ---------------------------------------------------------------------------------------------- scoring


def score_teacher(teacher_path: Path, val: Path, field: Path, truth: Path) -> dict[str, Any]:
    """The saved teacher as the tool sees it: top-1 on val, and on the in-class part of the field pool."""
    teacher = load_teacher(teacher_path)
    images, labels, _ = load_labeled_folder(val, teacher.spec)
    top1 = digits_builder()._top1  # the example builder's scorer: one definition of the teacher's top-1
    scores: dict[str, Any] = {"val_top1": round(top1(teacher, images, labels), 4)}
    rows = [r for r in read_truth(truth) if r["kind"] == "in-class"]
    if rows:
        paths = [field / r["path"] for r in rows]
        batches = list(iter_decoded(paths, teacher.spec, 256, DecodeReport()))
        kept = [i for b in batches for i in b.indices]
        pixels = torch.cat([b.images for b in batches])
        target = torch.tensor([teacher.spec.classes.index(rows[i]["label"]) for i in kept])
        scores["field_in_class_top1"] = round(top1(teacher, pixels, target), 4)
    scores["sha256"] = teacher.sha256
    return scores
