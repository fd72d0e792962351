"""Throughput of the method against its plain baselines (DESIGN §8), on the bundled example or a synthetic pool.

1. distillation images/s ÷ plain supervised training images/s of the same student on the same tensors (same
   augmentation, batch and optimizer; the distillation step runs the teacher on every batch when the recipe's
   teacher is online, the default, and mixes images when it mixes: the ratio is the whole cost of the method),
   and ÷ a plain KD step (teacher on the augmented view, KL at tau = 4): what EIKD costs over a user's own KD;
2. selection (decode + teacher pass + bookkeeping) images/s ÷ bare teacher inference images/s on decoded tensors.

    python -m benchmarks.throughput [--steps 60] [--batch N] [--device auto] [--set key=value]
    python -m benchmarks.throughput --camera224 [--steps 10]     # resnet18 teacher at 224, 512 camera JPEGs

`--camera224` is what a user with a torchvision teacher brings: a resnet18 teacher (random weights: speed does not
depend on them) at 224 px with ImageNet mean/std and resize 256 -> crop 224, 320x240 JPEGs, student
mobilenet_v3_small.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
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
from eikd_edge.devices import resolve_device
from eikd_edge.distill.loop import Trainer
from eikd_edge.distill.methods import METHODS
from eikd_edge.distill.step import augment
from eikd_edge.distributed import DistContext
from eikd_edge.models.teacher import load_teacher
from eikd_edge.run import RunPaths
from eikd_edge.scoring import score_pool


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

    def plain_kd_step(i: int) -> None:
        """What a user's own KD script costs per batch: the teacher on the augmented view, KL at tau = 4."""
        x = normalize(augment(images[ids(i)], recipe.train.augment, generator), teacher.spec)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            with torch.no_grad():
                target = teacher.predict(x)[0].float()
            logits = student(x).float()
        loss = F.kl_div(F.log_softmax(logits / 4, 1), F.log_softmax(target / 4, 1), log_target=True,
                        reduction="batchmean") * 16  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    trainer.net.hook.remove()
    plain_ips = timed(plain_step)
    plain_kd_ips = timed(plain_kd_step)
    return {"distill_img_s": distill_ips, "plain_img_s": plain_ips, "ratio": distill_ips / plain_ips,
            "plain_kd_img_s": plain_kd_ips, "ratio_vs_plain_kd": distill_ips / plain_kd_ips}  # fmt: skip


def selection_vs_inference(
    teacher, pool: Path, device: torch.device, batch: int, bn_deviation: bool = False
) -> dict[str, float]:
    """`bn_deviation`: the pass also measures each image's distance to the BatchNorm statistics, as ODSD's
    sampling (the default) asks of it."""
    score_pool(
        teacher, pool, device, batch, bn_deviation=bn_deviation
    )  # warm-up: first-call costs are not the method's
    scores = score_pool(teacher, pool, device, batch, bn_deviation=bn_deviation)  # no cache: a full pass
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


def camera224(folder: Path) -> tuple[Path, Path]:
    """A resnet18 checkpoint + sidecar at 224 px and 512 generated camera-style JPEGs, in `folder`."""
    import torchvision
    import yaml

    from benchmarks.memory import make_camera_pool

    folder.mkdir(parents=True, exist_ok=True)
    teacher = folder / "teacher.pt"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save({"state_dict": model.state_dict(), "arch": "resnet18"}, teacher)
    sidecar = {"input_size": [224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
               "classes": [f"class{i}" for i in range(10)]}  # fmt: skip
    teacher.with_suffix(".yaml").write_text(yaml.safe_dump(sidecar))
    make_camera_pool(folder / "pool", 512)
    return teacher, folder / "pool"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=EXAMPLE / "teacher.pt")
    parser.add_argument("--pool", type=Path, default=EXAMPLE / "field")
    parser.add_argument("--student", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=None, help="default: the recipe's batch size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/throughput*.json)")
    parser.add_argument("--camera224", action="store_true", help="resnet18 teacher at 224 px, camera JPEGs")
    args = parser.parse_args()
    if args.camera224:
        scratch = Path(tempfile.mkdtemp(prefix="eikd-throughput-"))
        atexit.register(shutil.rmtree, scratch, True)
        args.teacher, args.pool = camera224(scratch)
        args.student = args.student or "mobilenet_v3_small"
    args.out = args.out or RESULTS / ("throughput-camera224.json" if args.camera224 else "throughput.json")
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    overrides = [f"train.device={args.device}", *args.overrides]
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    if args.student:
        overrides.append(f"student.arch={args.student}")
    recipe = load_recipe(None, overrides)
    device = resolve_device(recipe.train.device)
    teacher = load_teacher(args.teacher).to(device)
    odsd = METHODS[recipe.method].samples_by_odsd(recipe.selection.sampler)
    sel = selection_vs_inference(teacher, args.pool, device, recipe.selection.batch_size, odsd)
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
    kd_ips, kd_ratio = train["plain_kd_img_s"], train["ratio_vs_plain_kd"]
    print(f"| distillation vs a plain KD step, teacher online ({recipe.student.arch}) | "
          f"{train['distill_img_s']:,.0f} | {kd_ips:,.0f} | {kd_ratio:.2f} |")  # fmt: skip
    print(f"| selection pass vs bare teacher inference | {sel['selection_img_s']:,.0f} | "
          f"{sel['teacher_img_s']:,.0f} | {sel['ratio']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
