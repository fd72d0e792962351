"""Peak memory of the selection pass (`eikd-edge select`: scan, decode, teacher pass, selection.json) vs pool size.

Each pool size runs in a fresh process, so each peak RSS (VmHWM) is that run's alone. Decoded images are streamed
in bounded batches; only the per-image teacher outputs (logits + embedding, a few hundred bytes) and the manifest
grow with the pool, so the peak should grow far slower than the pool.

    python benchmarks/memory.py [--base 200] [--factors 1,10,100] [--teacher examples/digits/teacher.pt]

Pools are real 8x8 handwritten digits (scikit-learn's bundled set) written as PNGs into a temp folder.
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
    from eikd_edge.cli import app
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
    started = time.perf_counter()
    try:
        app(args, standalone_mode=False)
    finally:
        wall = time.perf_counter() - started
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


def measure(teacher: Path, count: int, batch_size: int, scratch: Path) -> dict[str, float]:
    pool = scratch / f"pool-{count}"
    made = time.perf_counter()
    make_pool(pool, count)
    made = time.perf_counter() - made
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EIKD_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        "--child",
        str(teacher),
        str(pool),
        str(scratch / f"out-{count}"),
        str(batch_size),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"select on {count} images failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["pool"] = count
    result["generate_s"] = made
    shutil.rmtree(pool, ignore_errors=True)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, teacher, pool, out, batch = sys.argv
        child(Path(teacher), Path(pool), Path(out), int(batch))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=200, help="N: pools of N x each factor are measured")
    parser.add_argument("--factors", default="1,10,100")
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--batch-size", type=int, default=256, help="selection.batch_size (decode batch)")
    args = parser.parse_args()
    sizes = [args.base * int(f) for f in args.factors.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="eikd-memory-") as scratch:
        for count in sizes:
            rows.append(measure(args.teacher.resolve(), count, args.batch_size, Path(scratch)))
            print(f"  measured {count} images", file=sys.stderr)
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


if __name__ == "__main__":
    main()
