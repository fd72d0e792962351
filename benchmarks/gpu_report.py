"""The GPU benchmark's tables (markdown, printed and saved) and its JSON record."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _num(value: Any, spec: str, missing: str = "—") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def _pct(value: float | None) -> str:
    return _num(None if value is None else 100 * value, ".1f")


def throughput_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | mode | batch | img/s | target img/s | peak GPU mem (GiB) | data | teacher | student | "
        "step (ms) | steps timed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        m = row.get("measurement")
        head = f"| {row['title']} | {row['mode']} | {row['batch']} |"
        if m is None:
            lines.append(f"{head} failed: {row['error']} | {row['target_img_s']:,} | | | | | | |")
            continue
        phases = m["phases"]
        lines.append(
            f"{head} {_num(m['img_s'], ',.0f')} | {row['target_img_s']:,} | {_num(m['peak_gpu_mem_gib'], '.2f')} | "
            f"{_pct(phases['data'])}% | {_pct(phases['teacher'])}% | {_pct(phases['student'])}% | "
            f"{_num(m['step_ms'], '.1f')} | {m['steps']} |"
        )
    return "\n".join(lines)


def parity_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | device vs reference | steps × batch | max loss diff | weight-update diff | tolerance | result |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        p = row.get("parity")
        if p is None:
            lines.append(f"| {row['title']} | | | | | | failed: {row['error']} |")
            continue
        tol = p["tolerance"]
        verdict = "pass" if p["passed"] else "FAIL: " + "; ".join(p["reasons"])
        lines.append(
            f"| {row['title']} | {p['device']} vs {p['reference']} | {p['steps']} × {p['batch']} | "
            f"{_pct(p['loss_rel_max'])}% | {_pct(p['update_rel'])}% | "
            f"loss ≤ {tol['loss_rtol']:.0%}, update ≤ {tol['update_rtol']:.0%} | {verdict} |"
        )
    return "\n".join(lines)


def render(record: dict[str, Any]) -> str:
    """Everything a reader needs in one markdown block: machine, command, both tables."""
    return "\n".join(
        [
            f"machine: {record['machine']}",
            f"command: `{record['command']}`",
            "",
            "Training step of the package (Trainer.train_step at the recipe's defaults, teacher online, bf16 "
            "autocast + channels_last on CUDA); img/s over the timed steps after warm-up; data / teacher / "
            "student = share of an instrumented step in host→device copy + augmentation, the teacher's forward, "
            "and the student's forward/backward + losses + optimizer.",
            "",
            throughput_table(record["throughput"]),
            "",
            "Correctness: the same steps from the same weights and batches on the device and on the CPU (fp32).",
            "",
            parity_table(record["parity"]),
        ]
    )


def _json_safe(value: Any) -> Any:
    """Strict JSON: a non-finite float becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(record: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data, table = folder / "gpu.json", folder / "gpu.md"
    data.write_text(json.dumps(_json_safe(record), indent=2, allow_nan=False) + "\n")
    table.write_text(render(record) + "\n")
    return data, table
