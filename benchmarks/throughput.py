"""Throughput of the method against its plain baselines (DESIGN §8), on the bundled example or a synthetic pool.

1. distillation images/s ÷ plain supervised training images/s of the same student on the same tensors (same
   augmentation, batch and optimizer; the distillation step runs the teacher on every batch when the recipe's
   teacher is online, the default, and mixes images when it mixes: the ratio is the whole cost of the method);
2. selection (decode + teacher pass + bookkeeping) images/s ÷ bare teacher inference images/s on decoded tensors.

    python -m benchmarks.throughput [--steps 60] [--batch N] [--device auto] [--set key=value]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import EXAMPLE, RESULTS, machine
from eikd_edge.config import load_recipe
from eikd_edge.data import normalize
from eikd_edge.distill import resolve_device
from eikd_edge.distributed import DistContext
from eikd_edge.models.teacher import load_teacher
from eikd_edge.run import RunPaths
from eikd_edge.scoring import score_pool
from eikd_edge.trainer import Trainer
from eikd_edge.training import augment


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def distill_vs_plain(teacher, recipe, device, images, t_logits, t_embed, steps: int) -> dict[str, float]:
    """Same student, same tensors: one loop with the EIKD step, one with plain cross-entropy on teacher labels."""
    batch = recipe.train.batch_size
    trainer = Trainer(recipe, teacher, teacher.spec, device, DistContext(), RunPaths(Path(tempfile.mkdtemp())))
    trainer.total_steps = steps * 2
    trainer.configure_schedule(0)
    generator = torch.Generator(device=device).manual_seed(0)

    def timed(step) -> float:
        for i in range(5):  # warm-up
            step(i)
        _sync(device)
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        _sync(device)
        return steps * batch / (time.perf_counter() - start)

    def ids(i: int) -> torch.Tensor:
        return torch.arange(i * batch, (i + 1) * batch, device=device) % len(images)

    distill_ips = timed(lambda i: trainer.train_step(images[ids(i)], t_logits[ids(i)], t_embed[ids(i)], generator))

    student = trainer.student
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    labels = t_logits.argmax(1)

    def plain_step(i: int) -> None:
        x = normalize(augment(images[ids(i)], recipe.train.augment, generator), teacher.spec)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(student(x).float(), labels[ids(i)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    trainer.net.hook.remove()
    plain_ips = timed(plain_step)
    return {"distill_img_s": distill_ips, "plain_img_s": plain_ips, "ratio": distill_ips / plain_ips}


def selection_vs_inference(teacher, pool: Path, device: torch.device, batch: int) -> dict[str, float]:
    score_pool(teacher, pool, device, batch)  # warm-up: first-call costs (threads, allocator) are not the method's
    scores = score_pool(teacher, pool, device, batch)  # no cache: a full pass
    selection_ips = len(scores.paths) / scores.seconds
    from eikd_edge.data import DecodeReport, iter_decoded, scan_images

    decoded = torch.cat([b.images for b in iter_decoded(scan_images(pool), teacher.spec, 1024,
                                                        DecodeReport())])  # fmt: skip
    with torch.inference_mode():  # warm-up, as for the selection pass
        teacher.predict(normalize(decoded[:batch].to(device), teacher.spec))
    _sync(device)
    start = time.perf_counter()
    for begin in range(0, len(decoded), batch):
        x = normalize(decoded[begin : begin + batch].to(device), teacher.spec)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            teacher.predict(x)
    _sync(device)
    bare_ips = len(decoded) / (time.perf_counter() - start)
    return {"selection_img_s": selection_ips, "teacher_img_s": bare_ips, "ratio": selection_ips / bare_ips}


def synthetic_pool(folder: Path, count: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=EXAMPLE / "teacher.pt")
    parser.add_argument("--pool", type=Path, default=EXAMPLE / "field")
    parser.add_argument("--student", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=None, help="default: the recipe's batch size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = parser.parse_args()
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    overrides = [f"train.device={args.device}", *args.overrides]
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    if args.student:
        overrides.append(f"student.arch={args.student}")
    recipe = load_recipe(None, overrides)
    device = resolve_device(recipe.train.device, DistContext())
    teacher = load_teacher(args.teacher).to(device)
    sel = selection_vs_inference(teacher, args.pool, device, recipe.selection.batch_size)
    scores = score_pool(teacher, args.pool, device, recipe.selection.batch_size)
    from eikd_edge.data import DecodeReport, iter_decoded

    paths = [scores.root / p for p in scores.paths]
    images = torch.cat([b.images for b in iter_decoded(paths, teacher.spec, 1024, DecodeReport())])
    train = distill_vs_plain(
        teacher, recipe, device, images.to(device), scores.logits.to(device), scores.embeddings.to(device), args.steps
    )
    result = {"machine": machine(), "student": recipe.student.arch, "batch": recipe.train.batch_size, "selection": sel,
              "training": train}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"machine: {result['machine']}")
    print("| measure | method img/s | baseline img/s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| distillation vs plain training ({recipe.student.arch}, batch {recipe.train.batch_size}) | "
          f"{train['distill_img_s']:,.0f} | {train['plain_img_s']:,.0f} | {train['ratio']:.2f} |")  # fmt: skip
    print(f"| selection pass vs bare teacher inference | {sel['selection_img_s']:,.0f} | "
          f"{sel['teacher_img_s']:,.0f} | {sel['ratio']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
