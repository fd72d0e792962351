"""Plain Hinton KD: the reference a user would write in ~60 lines instead of using eikd-edge.

    python -m benchmarks.plain_kd --task mnist-real [--epochs 30 | --budget 120] [--seed 0]

Teacher run on every augmented batch (the very view the student sees), the whole field pool (every decodable
image), pad-crop (+ flip where it keeps the label), KL at tau=4 times tau^2, SGD (momentum 0.9, nesterov,
weight decay 5e-4), lr 0.1 with 5% warm-up then cosine, batch 128, student cifar_resnet8, the last epoch's
weights. Only the teacher loader and the image decoder come from eikd_edge (so preprocessing matches); the
training loop is this file's own. The budget is epochs, or end-to-end seconds (loading, decoding, training and
the per-epoch evaluation all count); then the schedule runs on elapsed time instead of steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eikd_edge.data import DecodeReport, iter_decoded, load_labeled_folder, normalize, scan_images
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import TeacherModel, load_teacher
from eikd_edge.models.zoo import build_model

STUDENT, BATCH, LR, TAU, PAD, WARMUP = "cifar_resnet8", 128, 0.1, 4.0, 4, 0.05


def decode_pool(folder: Path, spec: InputSpec) -> torch.Tensor:
    """Every decodable image under `folder` as uint8 [N, 3, H, W], decoded the way eikd-edge decodes."""
    batches = iter_decoded(scan_images(folder), spec, 512, DecodeReport())
    return torch.cat([batch.images for batch in batches])


def augment(images: torch.Tensor, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by PAD and crop back at a random offset per image; mirror half of them when flip is on."""
    n, _, height, width = images.shape
    padded = F.pad(images.float(), (PAD, PAD, PAD, PAD))
    rows = torch.randint(0, 2 * PAD + 1, (n, 1), generator=gen) + torch.arange(height)
    cols = torch.randint(0, 2 * PAD + 1, (n, 1), generator=gen) + torch.arange(width)
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]  # fmt: skip
    if flip:
        mirror = torch.rand(n, generator=gen) < 0.5
        out[mirror] = out[mirror].flip(-1)
    return out


def lr_factor(progress: float) -> float:
    if progress < WARMUP:
        return (progress + 1e-3) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - WARMUP) / (1 - WARMUP))))


@torch.inference_mode()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: InputSpec) -> float:
    model.eval()
    preds = torch.cat([model(normalize(images[i : i + 512], spec)).argmax(1) for i in range(0, len(images), 512)])
    return float((preds == labels).float().mean())


def train(
    teacher: TeacherModel,
    pool: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    seed: int,
    flip: bool,
    epochs: int | None = None,
    deadline: tuple[float, float] | None = None,  # (training start, end) in perf_counter seconds
) -> tuple[nn.Module, list[dict[str, Any]], int]:
    """Hinton KD with the teacher on every augmented batch; returns the last weights, history and steps."""
    torch.manual_seed(seed)
    spec = teacher.spec
    student = build_model(STUDENT, len(spec.classes))
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(pool) / BATCH)
    history: list[dict[str, Any]] = []
    step, train_s, epoch, last_loss = 0, 0.0, 0, float("nan")
    while epochs is None or epoch < epochs:
        started, order, done = time.perf_counter(), torch.randperm(len(pool), generator=gen), False
        student.train()
        for ids in order.split(BATCH):
            now = time.perf_counter()
            if deadline is not None and now >= deadline[1]:
                done = True
                break
            if deadline is None:
                progress = step / (epochs * per_epoch)
            else:
                progress = (now - deadline[0]) / (deadline[1] - deadline[0])
            for group in opt.param_groups:
                group["lr"] = LR * lr_factor(progress)
            x = normalize(augment(pool[ids], flip, gen), spec)
            t_logits, _ = teacher.predict(x)
            loss = F.kl_div(F.log_softmax(student(x) / TAU, 1), F.softmax(t_logits / TAU, 1), reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            (loss * TAU * TAU).backward()
            opt.step()
            step, last_loss = step + 1, float(loss.detach())
        train_s += time.perf_counter() - started
        epoch += 1
        record = {"epoch": epoch, "step": step, "wall_s": round(train_s, 3), "loss": last_loss}
        if val is not None:
            record["val_top1"] = top1(student, val[0], val[1], spec)
        history.append(record)
        if done:
            break
    return student.eval(), history, step


def plain_kd(
    teacher_path: Path,
    field: Path,
    val: Path | None,
    seed: int,
    flip: bool,
    epochs: int | None = None,
    budget_s: float | None = None,
) -> tuple[dict[str, Any], nn.Module]:
    """Run the reference end to end; metrics use the engine's keys (student.top1, train.wall_s, train.steps,
    history with val_top1 and wall_s = training seconds) plus total_s (end-to-end seconds)."""
    if (epochs is None) == (budget_s is None):
        raise ValueError("give exactly one of epochs and budget_s")
    start = time.perf_counter()
    teacher = load_teacher(teacher_path)
    pool = decode_pool(field, teacher.spec)
    labeled = load_labeled_folder(val, teacher.spec)[:2] if val is not None else None
    deadline = (time.perf_counter(), start + budget_s) if budget_s is not None else None
    student, history, steps = train(teacher, pool, labeled, seed, flip, epochs, deadline)
    last = history[-1] if history else {}
    metrics = {
        "method": "plain-kd",
        "student": {"arch": STUDENT, "top1": last.get("val_top1")},
        "train": {
            "wall_s": last.get("wall_s", 0.0),
            "steps": steps,
            "epochs": len(history),
            "images": len(pool),
            "budget": {"epochs": epochs} if epochs is not None else {"seconds": budget_s},
        },
        "history": history,
        "total_s": round(time.perf_counter() - start, 3),
    }
    return metrics, student


def main() -> None:
    from benchmarks.tasks import TASKS, load_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="epochs over the whole pool (default 30)")
    budget.add_argument("--budget", type=float, help="end-to-end wall time in seconds instead of epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    task = load_task(args.task)
    epochs = args.epochs if args.epochs or args.budget else 30
    metrics, _ = plain_kd(task.teacher, task.field, task.val, args.seed, task.flip, epochs, args.budget)
    for record in metrics["history"]:
        top1 = record.get("val_top1", float("nan"))
        print(f"epoch {record['epoch']}: val top-1 {top1:.4f} after {record['wall_s']:.1f}s of training")
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
