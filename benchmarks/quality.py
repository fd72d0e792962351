"""Distillation quality on one benchmark task: every method at its defaults and at an equal step budget, the
EIKD ablations, the teacher, and the plain-KD reference, over several seeds.

    python -m benchmarks.quality --task mnist-real [--seeds 0 1 2] [--methods eikd kd random dfnd]
                                 [--steps N] [--ablations] [--neighbours] [--plain-epochs 30] [--threads N]

* defaults: the recipe is the built-in defaults with only method, train.seed and train.device=cpu set:
  the defaults are the product.
* equal steps (--steps N): the same plus train.steps=N, identical for every method.
* ablations (--ablations): eikd without class-dropping / feature / relation / class balance, at --steps when
  given (components are compared at one budget), else at the defaults.
* neighbouring methods (--neighbours): ODSD sampling, the contrastive relation, both, the self-paced curriculum
  with kd and with eikd, in every mode run.
* plain KD (benchmarks/plain_kd.py): (a) --plain-epochs over the whole pool, (b) the end-to-end wall time of
  the eikd-defaults run of the same seed.
* "slice agreement": top-1 agreement with the teacher on ONE fixed 15% slice of the field pool, drawn once
  (seed 0) before anything trains, excluded from every run's training pool and identical for every method
  and seed; every run trains on the other 85%. "agreement" is the engine's own on its fixed field slice (drawn
  from the pool by path hash, also excluded from every method's training); "holdout agreement" is the engine's
  diagnostic on its selection's own held-out share. "picked"/"last": true val top-1 at the epoch the label-free
  criterion picks and at the last epoch (one run gives both, whatever train.keep says).

Writes benchmarks/results/quality-<task>.json (kept local), prints a markdown table and saves
benchmarks/plots/quality-<task>.png (val top-1 against training seconds, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, machine
from benchmarks.digits_openworld import VARIANTS
from benchmarks.plain_kd import plain_kd
from benchmarks.quality_report import PLOTS, markdown_table, plot_curves, summarize
from benchmarks.quality_slice import FieldSlice, split_field
from benchmarks.tasks import TASKS, Task, load_task
from eikd_edge.checkpoint import load_student
from eikd_edge.config import load_recipe
from eikd_edge.distill import DistillInputs, distill

METHODS = ("eikd", "kd", "random", "dfnd")
ABLATIONS = ("eikd w/o class-dropping", "eikd w/o feature loss", "eikd w/o relation loss", "eikd w/o class balance")
NEIGHBOURS = (  # the default is ODSD's sampling + contrastive relation: each row takes one or both back
    "eikd paper (top-confidence selection, KL relation)",
    "odsd sampling",
    "eikd, contrastive relation",
    "kd, self-paced curriculum",
    "eikd, self-paced curriculum",
)
# rows that change the pool (scarce, synthetic only) belong to benchmarks.scarce, which builds the subsets
ROW_VARIANTS = sorted(name for name in VARIANTS if not name.startswith(("scarce", "no field")))


def dig(metrics: dict[str, Any], dotted: str) -> Any:
    """metrics["a"]["b"] for "a.b", None where the engine does not report it."""
    value: Any = metrics
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def plan(
    methods: list[str],
    ablations: bool,
    steps: int | None,
    defaults: bool,
    neighbours: bool = False,
    variants: tuple[str, ...] = (),
) -> list[tuple[str, str, list[str]]]:
    """(row, mode, overrides) of every engine run for one seed; eikd at defaults first (plain KD (b) needs it).
    Ablations compare components at one budget: the equal-step one when given, else the defaults; the
    neighbouring methods (ODSD sampling and relation, the self-paced curriculum) run in every mode."""
    rows = [(m, [f"method={m}"]) for m in methods]
    modes = [("defaults", [])] if defaults else []
    if steps is not None:
        modes.append((f"{steps} steps", [f"train.steps={steps}"]))
    runs = [(row, mode, [*overrides, *extra]) for mode, extra in modes for row, overrides in rows]
    if ablations and modes:
        mode, extra = modes[-1]
        runs += [(name, mode, [*VARIANTS[name], *extra]) for name in ABLATIONS]
    if neighbours:
        runs += [(name, mode, [*VARIANTS[name], *extra]) for mode, extra in modes for name in NEIGHBOURS]
    runs += [(name, mode, [*VARIANTS[name], *extra]) for mode, extra in modes for name in variants]
    return runs


def run_engine(
    task: Task, field: Path | None, overrides: list[str], seed: int, out: Path, cut: FieldSlice
) -> dict[str, Any]:
    recipe = load_recipe(None, [*overrides, f"train.seed={seed}", "train.device=cpu"])
    started = time.perf_counter()
    result = distill(DistillInputs(task.teacher, field, task.val), recipe, out, overwrite=True)
    total_s = time.perf_counter() - started
    metrics = result.metrics
    student = load_student(out / "student.pt").model
    return {
        "top1": dig(metrics, "student.top1"),
        "agreement": dig(metrics, "agreement.top1"),
        "holdout_agreement": dig(metrics, "agreement.selection_holdout.top1"),
        "picked_epoch": dig(metrics, "epochs.picked.epoch"),
        "picked_top1": dig(metrics, "epochs.picked.val_top1"),
        "last_top1": dig(metrics, "epochs.last.val_top1"),
        **cut.score(student),
        "wall_s": dig(metrics, "train.wall_s"),
        "total_s": round(total_s, 3),
        "steps": dig(metrics, "train.steps"),
        "train_images": dig(metrics, "selection.train"),
        "history": [
            {k: h.get(k) for k in ("epoch", "wall_s", "val_top1", "agreement", "holdout_agreement")}
            for h in metrics.get("history", [])
        ],
        "metrics": metrics,
    }


def run_plain(task: Task, field: Path, seed: int, cut: FieldSlice, **budget: Any) -> dict[str, Any]:
    metrics, student = plain_kd(task.teacher, field, task.val, seed, task.flip, **budget)
    return {
        "top1": metrics["student"]["top1"],
        "agreement": None,
        **cut.score(student),
        "wall_s": metrics["train"]["wall_s"],
        "total_s": metrics["total_s"],
        "steps": metrics["train"]["steps"],
        "train_images": metrics["train"]["images"],
        "history": [{"wall_s": h["wall_s"], "val_top1": h.get("val_top1")} for h in metrics["history"]],
        "metrics": metrics,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--steps", type=int, default=None, help="equal optimizer-step budget rows (same for all)")
    parser.add_argument("--no-defaults", dest="defaults", action="store_false", help="skip the at-defaults rows")
    parser.add_argument("--ablations", action="store_true", help="add the EIKD ablations (at --steps, else defaults)")
    parser.add_argument("--variants", nargs="+", default=[], choices=ROW_VARIANTS, help="named rows to add")
    parser.add_argument(
        "--neighbours", action="store_true", help="add ODSD sampling/relation and the self-paced curriculum rows"
    )
    parser.add_argument("--plain-epochs", type=int, default=30, help="plain-KD reference (a): epochs (0 = skip)")
    parser.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain-KD reference")
    parser.add_argument("--slice", type=float, default=0.15, help="share of the pool held out for slice agreement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/quality-TASK.json)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default benchmarks/plots/quality-TASK.png)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep run folders here (default: a temp folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out_json = args.out or RESULTS / f"quality-{args.task}.json"
    out_png = args.plot or PLOTS / f"quality-{args.task}.png"
    task = load_task(args.task)
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"eikd-quality-{args.task}-"))
    field, cut = split_field(task, work / "field-train", args.slice)
    print(f"{task.name}: slice of {len(cut.labels)} field images held out ({cut.kinds}); runs train on {field}")
    runs: list[dict[str, Any]] = []
    summary: dict[str, Any] = {
        "task": task.name, "command": " ".join(["python -m benchmarks.quality", *(argv or sys.argv[1:])]),
        "machine": machine(), "seeds": args.seeds, "steps": args.steps, "plain_epochs": args.plain_epochs,
        "teacher": {**task.manifest["teacher"], "slice": cut.teacher_scores()}, "slice": cut.describe(),
        "task_manifest": task.manifest, "runs": runs,
    }  # fmt: skip

    def record(row: str, mode: str, seed: int, result: dict[str, Any]) -> None:
        runs.append({"row": row, "mode": mode, "seed": seed, **result})
        print(f"{row} [{mode}] seed {seed}: top-1 {result['top1'] or 0:.4f}, slice agreement "
              f"{result['slice_agreement']:.4f}, {result['steps']} steps, train {result['wall_s'] or 0:.1f}s, "
              f"total {result['total_s']:.1f}s", flush=True)  # fmt: skip
        summary["rows"] = summarize(runs)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(summary, indent=2) + "\n")

    for seed in args.seeds:
        eikd_total = None
        for row, mode, overrides in plan(
            args.methods, args.ablations, args.steps, args.defaults, args.neighbours, tuple(args.variants)
        ):
            result = run_engine(task, field, overrides, seed, work / "runs" / f"{row}-{mode}-{seed}", cut)
            if args.workdir is None:  # run folders are not kept: the numbers are in the JSON
                shutil.rmtree(work / "runs", ignore_errors=True)
            if row == "eikd" and mode == "defaults":
                eikd_total = result["total_s"]
            record(row, mode, seed, result)
        if args.plain and args.plain_epochs > 0:
            result = run_plain(task, field, seed, cut, epochs=args.plain_epochs)
            record(
                f"plain KD, {args.plain_epochs} epochs" if args.plain_epochs > 1 else "plain KD, 1 epoch",
                "reference",
                seed,
                result,
            )
        if args.plain and eikd_total is not None:
            result = run_plain(task, field, seed, cut, budget_s=eikd_total)
            record("plain KD, eikd-defaults wall time", "reference", seed, result)
    print(markdown_table(summary))
    plot_curves(summary, out_png)
    print(f"\nwrote {out_json} and {out_png}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
