"""Scarce field data: top-1 against the number of field images, for eikd, kd and eikd + synthesis, down to none.

    python -m benchmarks.scarce --task mnist-real [--fractions 1 0.1 0.02] [--synthesize 512] [--seeds 0 1 2]

The fixed agreement slice of benchmarks.quality is held out first; each fraction is a fixed random subset of the
rest (nested: the 2% subset lies inside the 10% one), the same for every method and seed. Rows per fraction:
`eikd`, `kd` and `eikd + synthesis` (the pool plus `--synthesize N` images made from the teacher alone); then
synthesis only (no field image at all) for each N. Every run uses the tool's defaults otherwise, so the budget
follows the pool as a user would get it. The plot answers: at what pool size does synthesis stop paying?
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, machine
from benchmarks.quality import run_engine
from benchmarks.quality_report import PLOTS, summarize
from benchmarks.quality_slice import SLICE_SEED, split_field
from benchmarks.tasks import TASKS, load_task
from eikd_edge.data import scan_images

SYNTHESIS_STEPS = 100  # Adam steps per synthetic batch: half the tool's default, as in digits_openworld


def nested_subsets(field: Path, fractions: list[float], work: Path) -> dict[float, tuple[Path, int]]:
    """Copy a fixed share of `field` per fraction (smaller ones inside larger ones); 1.0 is the folder itself."""
    files = sorted(p.relative_to(field).as_posix() for p in scan_images(field))
    random.Random(SLICE_SEED + 1).shuffle(files)
    out: dict[float, tuple[Path, int]] = {}
    for fraction in fractions:
        if fraction >= 1.0:
            out[fraction] = (field, len(files))
            continue
        count = max(1, round(fraction * len(files)))
        folder = work / f"field-{fraction:g}"
        shutil.rmtree(folder, ignore_errors=True)
        for name in files[:count]:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(field / name, target)
        out[fraction] = (folder, count)
    return out


def plan(
    fractions: list[float], synthesize: list[int], reused: frozenset[str] = frozenset(), synthesis_only: bool = True
) -> list[tuple[str, float, int, list[str]]]:
    """(row, fraction, synthetic images, overrides) of every run for one seed; whole-pool rows named in `reused`
    come from a benchmarks.quality run instead (the same slice, pool, defaults and seed: the same run)."""
    synth = [f"synthesis.steps={SYNTHESIS_STEPS}"]
    runs: list[tuple[str, float, int, list[str]]] = []
    for fraction in fractions:
        plain = [("eikd", fraction, 0, []), ("kd", fraction, 0, ["method=kd"])]
        runs += [run for run in plain if not (fraction >= 1.0 and run[0] in reused)]
        runs += [("eikd + synthesis", fraction, n, [f"synthesis.count={n}", *synth]) for n in synthesize[:1]]
    if synthesis_only:
        runs += [("synthesis only", 0.0, n, [f"synthesis.count={n}", *synth]) for n in synthesize]
    return runs


def plot(summary: dict[str, Any], path: Path) -> None:
    """Top-1 (mean ± std over seeds) against field images, one line per row; synthesis only at zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in dict.fromkeys(r["row"] for r in summary["rows"]):
        rows = sorted((r for r in summary["rows"] if r["row"] == name), key=lambda r: r["field_images"])
        xs = [max(r["field_images"], 1) for r in rows]
        ys = [100 * r["top1_mean"] for r in rows]
        errors = [100 * (r["top1_std"] or 0) for r in rows]
        labels = [f"{name} ({r['synthetic']} synthetic)" if name == "synthesis only" else name for r in rows]
        if name == "synthesis only":
            for x, y, e, label in zip(xs, ys, errors, labels, strict=True):
                ax.errorbar([x], [y], yerr=[e], marker="s", linestyle="none", capsize=3, label=label)
        else:
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=labels[0])
    ax.axhline(100 * summary["teacher"]["val_top1"], color="grey", linestyle=":", label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("field images given to the run (log; synthesis only drawn at 1)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(f"{summary['task']}: scarce field data, seeds {summary['seeds']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"\n{summary['task']}: seeds {summary['seeds']}; teacher {100 * summary['teacher']['val_top1']:.1f}%\n",
        "| field images | row | synthetic images | true top-1 (%) | slice agreement (%) | total s | steps |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        top1 = f"{100 * r['top1_mean']:.1f} ± {100 * (r['top1_std'] or 0):.1f}"
        agree = f"{100 * r['slice_agreement_mean']:.1f}" if r.get("slice_agreement_mean") is not None else "—"
        lines.append(
            f"| {r['field_images']} | {r['row']} | {r['synthetic']} | {top1} | {agree} | "
            f"{r['total_s']:.0f} | {r['steps']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1, 0.02])
    parser.add_argument("--synthesize", type=int, nargs="+", default=[512, 2048],
                        help="synthetic image counts; the first is also added to each pool")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override added to every run (e.g. train.steps=50 for a smoke run)")  # fmt: skip
    parser.add_argument("--reuse", type=Path, default=None,
                        help="a benchmarks.quality JSON of the same task whose eikd/kd rows at defaults are the "
                             "whole-pool points (not run again)")  # fmt: skip
    parser.add_argument("--no-synthesis-only", dest="synthesis_only", action="store_false",
                        help="skip the synthesis-only rows (another run of these seeds has them)")  # fmt: skip
    parser.add_argument("--slice", type=float, default=0.15, help="share of the pool held out for slice agreement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/scarce-TASK.json)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default benchmarks/plots/scarce-TASK.png)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="run nothing: join these JSONs (e.g. one per seed, run side by side), write the "
                             "table, the plot and --out")  # fmt: skip
    args = parser.parse_args(argv)
    if args.merge:
        merge(
            args.merge, args.out or RESULTS / f"scarce-{args.task}.json", args.plot or PLOTS / f"scarce-{args.task}.png"
        )
        return
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out_json = args.out or RESULTS / f"scarce-{args.task}.json"
    task = load_task(args.task)
    work = Path(tempfile.mkdtemp(prefix=f"eikd-scarce-{args.task}-"))
    field, cut = split_field(task, work / "field-train", args.slice)
    subsets = nested_subsets(field, sorted(set(args.fractions), reverse=True), work)
    runs: list[dict[str, Any]] = []
    summary: dict[str, Any] = {
        "task": task.name, "command": " ".join(["python -m benchmarks.scarce", *(argv or sys.argv[1:])]),
        "machine": machine(), "seeds": args.seeds, "teacher": task.manifest["teacher"], "slice": cut.describe(),
        "subsets": {f"{f:g}": n for f, (_, n) in subsets.items()}, "runs": runs,
    }  # fmt: skip
    reused = reused_runs(args.reuse, args.seeds, subsets.get(1.0, (None, 0))[1], args.slice) if args.reuse else []
    for run in reused:
        runs.append(run)
    reused_rows = frozenset(r["row"].split(" | ")[0] for r in reused)
    for seed in args.seeds:
        for row, fraction, synthetic, overrides in plan(
            sorted(subsets, reverse=True), args.synthesize, reused_rows, args.synthesis_only
        ):
            folder, count = subsets[fraction] if fraction > 0 else (None, 0)
            result = run_engine(task, folder, [*overrides, *args.overrides], seed, work / "run", cut)
            shutil.rmtree(work / "run", ignore_errors=True)
            key = f"{row} | {count} | {synthetic}"
            runs.append({"row": key, "mode": "defaults", "seed": seed, "field_images": count,
                         "synthetic": synthetic, **{k: v for k, v in result.items() if k != "metrics"}})  # fmt: skip
            print(f"{key} seed {seed}: top-1 {result['top1']:.4f}, total {result['total_s']:.0f}s", flush=True)
            summary["rows"] = [_split_key(r) for r in summarize(runs)]
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(summary, indent=2) + "\n")
    print(table(summary))
    plot(summary, args.plot or PLOTS / f"scarce-{args.task}.png")
    shutil.rmtree(work, ignore_errors=True)


def reused_runs(path: Path, seeds: list[int], count: int, fraction: float) -> list[dict[str, Any]]:
    """The eikd and kd runs at defaults of a benchmarks.quality JSON as whole-pool rows, checked to be comparable."""
    data = json.loads(path.read_text())
    if data["slice"]["fraction"] != fraction:
        raise SystemExit(f"{path}: its slice is {data['slice']['fraction']}, this run's {fraction}")
    out = []
    for run in data["runs"]:
        if run["row"] in ("eikd", "kd") and run["mode"] == "defaults" and run["seed"] in seeds:
            kept = {k: v for k, v in run.items() if k not in ("metrics", "row", "mode")}
            out.append({**kept, "row": f"{run['row']} | {count} | 0", "mode": "defaults", "field_images": count,
                        "synthetic": 0, "reused_from": str(path)})  # fmt: skip
    return out


def merge(paths: list[Path], out_json: Path, out_png: Path) -> None:
    """One summary from several runs of this script on the same task (a run's duplicate seeds are dropped)."""
    parts = [json.loads(path.read_text()) for path in paths]
    summary, seen, runs = dict(parts[0]), set(), []
    for part in parts:
        for run in part["runs"]:
            key = (run["row"], run["seed"])
            if key not in seen:
                seen.add(key)
                runs.append(run)
    summary.update(runs=runs, seeds=sorted({r["seed"] for r in runs}), merged_from=[str(p) for p in paths])
    summary["rows"] = [_split_key(r) for r in summarize(runs)]
    out_json.write_text(json.dumps(summary, indent=2) + "\n")
    print(table(summary))
    plot(summary, out_png)


def _split_key(row: dict[str, Any]) -> dict[str, Any]:
    """summarize() groups by the composite key; give the table and plot its parts back."""
    name, count, synthetic = row["row"].split(" | ")
    return {**row, "row": name, "field_images": int(count), "synthetic": int(synthetic)}


if __name__ == "__main__":
    main()
