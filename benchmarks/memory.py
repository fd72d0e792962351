"""Peak memory vs pool size: of the selection pass (`eikd-edge select`), or of a whole `distill` at 224 px.

Each pool size runs in a fresh process, so each peak RSS (VmHWM) is that run's alone. Decoded images are streamed
in bounded batches and the training sets are read from their files in the run folder a batch at a time; only the
per-image teacher outputs (logits + embedding, a few hundred bytes) and the manifest grow with the pool, so the
peak should grow far slower than the pool.

    python -m benchmarks.memory [--base 200] [--factors 1,10,100] [--teacher examples/digits/teacher.pt]
    python -m benchmarks.memory --stage distill [--base 1000] [--factors 1,10,100] [--steps 20]

`select`: real 8x8 handwritten digits (scikit-learn's bundled set) written as PNGs into a temp folder.
`distill`: generated camera-style 320x240 JPEGs, every one different; a small random-weight teacher at 224 px
(ImageNet mean/std, resize 256 -> crop 224) saved as torch.export; student mobilenet_v3_small at width 0.25
(memory is the question here, not accuracy), a fixed number of optimizer steps, default keep fraction.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = ROOT / "examples" / "digits" / "teacher.pt"
DISTILL_STUDENT = "mobilenet_v3_small"
DISTILL_WIDTH = 0.25


def _vm_hwm_mib() -> float:
    """Peak resident set size of this process so far (Linux /proc; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def make_pool(folder: Path, count: int) -> None:
    """`count` PNGs: the 1,797 distinct digits encoded once, then written round-robin (fast even for 20,000)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().images
    encoded = []
    for pixels in digits:
        buffer = io.BytesIO()
        Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8), mode="L").save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"  # field dumps come in sub-folders; also keeps directories small
        if i % 1000 == 0:
            sub.mkdir(exist_ok=True)
        (sub / f"{i:06d}.png").write_bytes(encoded[i % len(encoded)])


def child(teacher: Path, pool: Path, out: Path, batch_size: int) -> None:
    """One measured run, in this fresh process: import + teacher load baseline, then the select command."""
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    import torch

    torch.set_num_threads(1)
    from eikd_edge.models.teacher import load_teacher

    load_teacher(teacher)  # warm the same imports and allocations the command makes before it touches the pool
    baseline = _vm_hwm_mib()
    args = [
        "select",
        "-t",
        str(teacher),
        "-u",
        str(pool),
        "-o",
        str(out),
        "--set",
        f"selection.batch_size={batch_size}",
    ]
    wall = _timed_cli(args)
    selection = json.loads((out / "selection.json").read_text())
    print(
        json.dumps(
            {
                "baseline_mib": baseline,
                "peak_mib": _vm_hwm_mib(),
                "wall_s": wall,
                "decoded": selection["pool"]["decoded"],
                "files": selection["pool"]["files"],
            }
        )
    )


def _timed_cli(args: list[str]) -> float:
    """Run one eikd-edge command in this process; its wall seconds."""
    from eikd_edge.cli import app

    started = time.perf_counter()
    app(args, standalone_mode=False)
    return time.perf_counter() - started


def distill_child(teacher: Path, pool: Path, out: Path, steps: int) -> None:
    """One measured `distill`, in this fresh process: baseline after imports, teacher and student are built."""
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    import torch

    torch.set_num_threads(1)
    from eikd_edge.models.teacher import load_teacher
    from eikd_edge.models.zoo import build_model

    load_teacher(teacher)
    build_model(DISTILL_STUDENT, 10, DISTILL_WIDTH)
    baseline = _vm_hwm_mib()
    sets = [f"train.steps={steps}", "train.device=cpu", f"student.width={DISTILL_WIDTH}"]
    args = ["distill", "-t", str(teacher), "-u", str(pool), "-o", str(out), "--student", DISTILL_STUDENT]
    args += ["--threads", "1", *[arg for item in sets for arg in ("--set", item)]]
    wall = _timed_cli(args)
    selection = json.loads((out / "selection.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    summary = {
        "baseline_mib": baseline,
        "peak_mib": _vm_hwm_mib(),
        "wall_s": wall,
        "decoded": selection["pool"]["decoded"],
        "files": selection["pool"]["files"],
        "train_images": metrics["selection"]["train"],
    }
    print(json.dumps(summary))


def make_camera_pool(folder: Path, count: int) -> None:
    """`count` different 320x240 JPEGs: smooth random colour fields with a few boxes, in folders of 1,000."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(exist_ok=True)
        field = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(field, "RGB").resize((320, 240), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.integers(0, 280), rng.integers(0, 200)
            draw.rectangle(
                (x, y, x + rng.integers(10, 40), y + rng.integers(10, 40)), fill=tuple(rng.integers(0, 256, 3))
            )
        image.save(sub / f"{i:06d}.jpg", quality=85)


def make_teacher_224(folder: Path) -> Path:
    """A small random-weight classifier at 224 px (two strided convolutions): cheap enough that a 100k-image
    pool is scored in minutes on one core, so the measurement is of the data path, not of the teacher."""
    import torch
    import yaml
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=4), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip
    example = torch.zeros(2, 3, 224, 224)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "teacher.pt2"
    torch.export.save(program, str(path))
    sidecar = {
        "input_size": [224, 224],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "classes": [f"class{i}" for i in range(10)],
    }
    (folder / "teacher.yaml").write_text(yaml.safe_dump(sidecar, sort_keys=False))
    return path


def measure(
    teacher: Path, count: int, batch_size: int, scratch: Path, stage: str = "select", steps: int = 20
) -> dict[str, float]:
    pool = scratch / f"pool-{count}"
    made = time.perf_counter()
    (make_camera_pool if stage == "distill" else make_pool)(pool, count)
    made = time.perf_counter() - made
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EIKD_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    extra = str(steps) if stage == "distill" else str(batch_size)
    out = scratch / f"out-{count}"
    command = [sys.executable, "-m", "benchmarks.memory", f"--{stage}-child", str(teacher), str(pool), str(out), extra]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{stage} on {count} images failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["pool"] = count
    result["generate_s"] = made
    shutil.rmtree(pool, ignore_errors=True)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--select-child", "--distill-child"):
        _, flag, teacher, pool, out, number = sys.argv
        run = child if flag == "--select-child" else distill_child
        run(Path(teacher), Path(pool), Path(out), int(number))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("select", "distill"), default="select")
    parser.add_argument("--base", type=int, default=None, help="N: pools of N x each factor (200 select, 1000 distill)")
    parser.add_argument("--factors", default="1,10,100")
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--batch-size", type=int, default=256, help="selection.batch_size (decode batch)")
    parser.add_argument("--steps", type=int, default=20, help="distill: optimizer steps (batch 64)")
    args = parser.parse_args()
    base = args.base or (1000 if args.stage == "distill" else 200)
    sizes = [base * int(f) for f in args.factors.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="eikd-memory-") as scratch:
        teacher = make_teacher_224(Path(scratch) / "teacher") if args.stage == "distill" else args.teacher.resolve()
        for count in sizes:
            rows.append(measure(teacher, count, args.batch_size, Path(scratch), args.stage, args.steps))
            print(f"  measured {count} images", file=sys.stderr)
    if args.stage == "distill":
        print_distill_table(rows, args.steps)
        return
    print(f"\nselection pass (`eikd-edge select`), teacher {args.teacher.name}, decode batch {args.batch_size}, ")
    print(f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS=1, one fresh process per pool size\n")
    print("| pool size | decoded | peak RSS MiB | after imports + teacher MiB | growth MiB | wall s | img/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        growth = row["peak_mib"] - row["baseline_mib"]
        rate = row["decoded"] / row["wall_s"] if row["wall_s"] else 0.0
        print(
            f"| {row['pool']:,} | {row['decoded']:,} | {row['peak_mib']:.1f} | {row['baseline_mib']:.1f} | "
            f"{growth:.1f} | {row['wall_s']:.2f} | {rate:,.0f} |"
        )


def print_distill_table(rows: list[dict[str, float]], steps: int) -> None:
    print(f"\n`eikd-edge distill` at 224 px, {DISTILL_STUDENT} width {DISTILL_WIDTH}, {steps} steps of batch 64, ")
    print(f"--threads 1, {os.cpu_count()} CPU cores, one fresh process per pool size\n")
    print("| pool size | train images | decoded set on disk GB | peak RSS MiB | after imports + models MiB |", end="")
    print(" growth MiB | wall s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        growth = row["peak_mib"] - row["baseline_mib"]
        on_disk = row["train_images"] * 3 * 224 * 224 / 1e9
        print(
            f"| {row['pool']:,} | {row['train_images']:,} | {on_disk:.2f} | {row['peak_mib']:.0f} | "
            f"{row['baseline_mib']:.0f} | {growth:.0f} | {row['wall_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
