"""How well does `select --novel` find what is novel? Precision/recall of the flagged images against the
benchmark tasks' ground truth (field_truth.csv: in-class / distractor / noise); the tool never reads the truth.

    python -m benchmarks.novel_quality [--task NAME ...] [--workdir DIR] [--threshold T ...] [--threads N]

Recall of noise and of distractors, and the false-positive rate (share of in-class images flagged).
The teacher scores each pool once (cached in --workdir), then the detector runs on those scores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.task_common import read_truth
from benchmarks.tasks import TASKS, load_task
from eikd_edge.models.teacher import load_teacher
from eikd_edge.novel import NovelConfig, find_novel
from eikd_edge.scoring import score_pool


def flagged_rates(paths: list[str], flagged: np.ndarray, truth: dict[str, str]) -> dict[str, Any]:
    """Per kind: how many there are, how many were flagged; plus recall, false-positive rate and precision."""
    kinds = np.array([truth.get(p, "unknown") for p in paths])
    mask = np.zeros(len(paths), dtype=bool)
    mask[flagged] = True
    out: dict[str, Any] = {}
    for kind in ("noise", "distractor", "in-class"):
        members = kinds == kind
        out[kind] = {"count": int(members.sum()), "flagged": int((mask & members).sum())}
    novel = mask & (kinds != "in-class")
    out["flagged"] = int(mask.sum())
    out["precision"] = float(novel.sum() / mask.sum()) if mask.any() else None
    out["noise_recall"] = out["noise"]["flagged"] / max(out["noise"]["count"], 1)
    out["distractor_recall"] = out["distractor"]["flagged"] / max(out["distractor"]["count"], 1)
    out["false_positive_rate"] = out["in-class"]["flagged"] / max(out["in-class"]["count"], 1)
    return out


def measure(name: str, workdir: Path, thresholds: list[float]) -> list[dict[str, Any]]:
    """The flagged rates at each threshold, from one scoring pass over the task's pool."""
    task = load_task(name)
    teacher = load_teacher(task.teacher)
    pool = score_pool(teacher, task.field, torch.device("cpu"), 256, workdir / f"{name}-scores.pt")
    truth = {row["path"]: row["kind"] for row in read_truth(task.truth)}
    out = []
    for threshold in thresholds:
        config = NovelConfig(threshold=threshold)
        report = find_novel(pool.logits, pool.embeddings, pool.paths, teacher.spec.classes, config)
        out.append(flagged_rates(pool.paths, report.candidates, truth))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--workdir", type=Path, default=None, help="cache the teacher's scores here")
    parser.add_argument("--threshold", type=float, nargs="+", default=[NovelConfig().threshold],
                        help="novelty-score thresholds to report (default: the tool's)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="eikd-novelq-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print("| task | threshold | flagged | precision | noise recall | distractor recall | in-class flagged (FP rate) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.task:
        for threshold, rates in zip(args.threshold, measure(name, workdir, args.threshold), strict=True):
            print(table_row(name, threshold, rates), flush=True)


def table_row(name: str, threshold: float, r: dict[str, Any]) -> str:
    """One markdown row of the results table."""
    precision = "—" if r["precision"] is None else f"{100 * r['precision']:.1f}%"
    noise, distractor, inclass = (f"{r[k]['flagged']}/{r[k]['count']}" for k in ("noise", "distractor", "in-class"))
    return (
        f"| {name} | {threshold:g} | {r['flagged']} | {precision} | {100 * r['noise_recall']:.1f}% ({noise}) | "
        f"{100 * r['distractor_recall']:.1f}% ({distractor}) | {100 * r['false_positive_rate']:.1f}% ({inclass}) |"
    )


if __name__ == "__main__":
    main()
