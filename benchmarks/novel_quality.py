"""How well does `select --novel` find what is novel? Precision/recall of the flagged images against the
benchmark tasks' ground truth (field_truth.csv: in-class / distractor / noise); the tool never reads the truth.

    python -m benchmarks.novel_quality [--task NAME ...] [--workdir DIR] [--threshold T ...] [--threads N]
                                       [--json PATH]

Recall of noise and of distractors, and the false-positive rate (share of in-class images flagged). Then the
purity of each reported cluster, since a person looks at a cluster as one new "thing": its share of each kind
and of its majority source family. The teacher scores each pool once (cached in --workdir), then the detector
runs on those scores. --json writes every figure (rates and clusters).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.task_common import read_truth
from benchmarks.tasks import TASKS, load_task
from eikd_edge.models.teacher import load_teacher
from eikd_edge.novel import NovelCluster, NovelConfig, find_novel
from eikd_edge.scoring import score_pool

KINDS = ("in-class", "distractor", "noise")


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


def source_family(source: str) -> str:
    """What made the image, without the font, photo or letter: the part of `source` before the first ':' (digit,
    letter, photo, noise, printed, sklearn). natural-photos' sources carry no prefix, so there the family is the
    photograph or noise type itself, a finer split than on the digit tasks."""
    return source.split(":", 1)[0]


def cluster_purity(members: np.ndarray, paths: list[str], truth: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Size, share of each kind, and the majority source family with its share (the purity), over the cluster's
    own members only: the other candidates belong to other clusters. Images missing from the truth count as
    "unknown"."""
    rows = [truth.get(paths[int(i)], {}) for i in members]
    kinds = Counter(row.get("kind", "unknown") for row in rows)
    families = Counter(source_family(row.get("source", "unknown")) for row in rows)
    size = len(rows)
    family, count = families.most_common(1)[0] if size else ("", 0)
    return {
        "size": size,
        "kinds": {kind: kinds[kind] / size if size else 0.0 for kind in KINDS},
        "family": family,
        "purity": count / size if size else 0.0,
    }


def report_purity(
    clusters: list[NovelCluster], paths: list[str], truth: dict[str, dict[str, str]]
) -> tuple[list[dict[str, Any]], float | None]:
    """Every cluster's purity (with its id and nearest class) and the size-weighted mean purity (None without
    clusters): the share of reported images that sit with the majority family of their cluster."""
    out = [{"id": c.id, "nearest_class": c.nearest_class, **cluster_purity(c.members, paths, truth)} for c in clusters]
    total = sum(c["size"] for c in out)
    mean = sum(c["size"] * c["purity"] for c in out) / total if total else None
    return out, mean


def measure(name: str, workdir: Path, thresholds: list[float]) -> list[dict[str, Any]]:
    """The flagged rates and cluster purities at each threshold, from one scoring pass over the task's pool."""
    task = load_task(name)
    teacher = load_teacher(task.teacher)
    pool = score_pool(teacher, task.field, torch.device("cpu"), 256, workdir / f"{name}-scores.pt")
    truth = {row["path"]: row for row in read_truth(task.truth)}
    kinds = {path: row["kind"] for path, row in truth.items()}
    out = []
    for threshold in thresholds:
        config = NovelConfig(threshold=threshold)
        report = find_novel(pool.logits, pool.embeddings, pool.paths, teacher.spec.classes, config)
        clusters, mean = report_purity(report.clusters, pool.paths, truth)
        rates = flagged_rates(pool.paths, report.candidates, kinds)
        out.append({"threshold": threshold, **rates, "clusters": clusters, "mean_purity": mean})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--workdir", type=Path, default=None, help="cache the teacher's scores here")
    parser.add_argument("--threshold", type=float, nargs="+", default=[NovelConfig().threshold],
                        help="novelty-score thresholds to report (default: the tool's)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure (rates, clusters) here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="eikd-novelq-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print("| task | threshold | flagged | precision | noise recall | distractor recall | in-class flagged (FP rate) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results: dict[str, list[dict[str, Any]]] = {}
    for name in args.task:
        results[name] = measure(name, workdir, args.threshold)
        for r in results[name]:
            print(table_row(name, r["threshold"], r), flush=True)
    print("\n| task | cluster | size | nearest class | in-class / distractor / noise | majority source (share) |")
    print("|---|---:|---:|---|---|---|")
    for name, rows in results.items():
        for r in rows:
            label = name if len(rows) == 1 else f"{name} @ {r['threshold']:g}"
            print("\n".join(purity_rows(label, r)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tasks": results}, indent=2) + "\n")


def table_row(name: str, threshold: float, r: dict[str, Any]) -> str:
    """One markdown row of the results table."""
    precision = "—" if r["precision"] is None else f"{100 * r['precision']:.1f}%"
    noise, distractor, inclass = (f"{r[k]['flagged']}/{r[k]['count']}" for k in ("noise", "distractor", "in-class"))
    return (
        f"| {name} | {threshold:g} | {r['flagged']} | {precision} | {100 * r['noise_recall']:.1f}% ({noise}) | "
        f"{100 * r['distractor_recall']:.1f}% ({distractor}) | {100 * r['false_positive_rate']:.1f}% ({inclass}) |"
    )


def purity_rows(label: str, r: dict[str, Any]) -> list[str]:
    """Markdown rows of the purity table: one per cluster, then the task's size-weighted mean purity."""
    rows = []
    for c in r["clusters"]:
        kinds = " / ".join(f"{100 * c['kinds'][k]:.0f}%" for k in KINDS)
        rows.append(f"| {label} | {c['id']} | {c['size']} | {c['nearest_class']} | {kinds} | "
                    f"{c['family']} ({100 * c['purity']:.0f}%) |")  # fmt: skip
    total = sum(c["size"] for c in r["clusters"])
    shares = (sum(c["size"] * c["kinds"][k] for c in r["clusters"]) / max(total, 1) for k in KINDS)
    mean = "—" if r["mean_purity"] is None else f"{100 * r['mean_purity']:.1f}%"
    rows.append(f"| {label} | all | {total} | | {' / '.join(f'{100 * v:.0f}%' for v in shares)} | "
                f"mean purity **{mean}** |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
