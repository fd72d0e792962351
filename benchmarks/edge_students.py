"""Edge students as eikd-edge ships them: params, MACs, ONNX FP32 and ORT INT8 latency at batch 1.

Each student is built with random weights (latency does not depend on them), saved as a student checkpoint and
taken through the real export path (`export_onnx`: re-parameterisation, opset 17, dynamic batch, the PyTorch
parity self-check) and one ORT static INT8 setting. A model that fails any step gets its reason in the table:
that is the data behind `eikd_edge.models.timm_zoo.EXPORT_ISSUES`.

    python -m benchmarks.edge_students --size 224 --threads 1 --iters 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, machine
from eikd_edge.checkpoint import load_student, save_student
from eikd_edge.export.int8_settings import QuantSetting, quantize_one
from eikd_edge.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx
from eikd_edge.models import timm_zoo
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.zoo import build_model, count_macs, count_parameters, for_export
from eikd_edge.ort_session import session

REFERENCE = ("mobilenet_v3_small",)  # a torchvision student for scale
INT8 = QuantSetting("u8", per_channel=False)


def latency_ms(path: Path, x: np.ndarray, threads: int, iters: int) -> float:
    """Median ms of one batch-1 call after a short warm-up."""
    sess = session(path, threads)
    for _ in range(5):
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(arch: str, size: int, classes: int, threads: int, iters: int, work: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"arch": arch}
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = build_model(arch, classes).eval()
        fused = for_export(model, arch)
        row["params"] = count_parameters(fused)
        row["macs"] = count_macs(fused, (size, size))
        spec = InputSpec((size, size)).with_classes([str(i) for i in range(classes)])
        ckpt_path = save_student(work / "student.pt", model, arch, {}, spec)
        fp32 = export_onnx(load_student(ckpt_path), work / "student.onnx", opset=17)
        row["onnx_self_check_max_abs_dlogit"] = fp32.self_check_max_abs_dlogit
        rng = np.random.default_rng(0)
        calib = rng.standard_normal((32, 3, size, size)).astype(np.float32)
        int8 = quantize_one(fp32.path, work / "student.int8.onnx", INT8, calib, None)
        x = calib[:1]
        row["fp32_ms"] = latency_ms(fp32.path, x, threads, iters)
        row["int8_ms"] = latency_ms(int8, x, threads, iters)
        row["status"] = "ok"
    except Exception as exc:  # recorded, not raised: the table says which step failed and why
        row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| student | params | MACs | ONNX FP32 ms | ORT INT8 ms | export |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        params = f"{r['params'] / 1e6:.2f}M" if "params" in r else "-"
        macs = f"{r['macs'] / 1e6:.0f}M" if "macs" in r else "-"
        fp32 = f"{r['fp32_ms']:.1f}" if "fp32_ms" in r else "-"
        int8 = f"{r['int8_ms']:.1f}" if "int8_ms" in r else "-"
        lines.append(f"| `{r['arch']}` | {params} | {macs} | {fp32} | {int8} | {r['status']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--models", nargs="*", help="architectures (default: the curated timm set + reference)")
    parser.add_argument("--out", type=Path, default=RESULTS / "edge_students.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, args.threads))
    archs = args.models or [*timm_zoo.curated_students(), *REFERENCE]
    rows = []
    for arch in archs:
        with tempfile.TemporaryDirectory(prefix="eikd-edge-students-") as tmp:
            row = measure(arch, args.size, args.classes, args.threads, args.iters, Path(tmp))
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": machine(), "size": args.size, "threads": args.threads, "iters": args.iters,
              "int8_setting": INT8.label, "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{machine()}; batch 1, {args.size}x{args.size}, {args.threads} thread(s), median of {args.iters}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
