"""digits-openworld (DESIGN §8): every method and ablation on the bundled example, same step budget, several seeds.

The teacher knows handwritten digits; the field pool holds printed digits and out-of-label-space distractors and
no handwritten digit; the score is true top-1 on the handwritten test split (examples/digits/val).

    python benchmarks/digits_openworld.py [--seeds 0 1 2] [--steps 400] [--only eikd kd]

"scarce" rows train on a fixed 10% of the pool (240 images, the same for every seed); "synthetic" rows add
images synthesised from the teacher alone (one synthesis, seed 0, shared by every training seed: its
cost is reported once, in the synthesis column).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import EXAMPLE, RESULTS, machine, mean_std
from eikd_edge.config import load_recipe
from eikd_edge.distill import DistillInputs, distill

VARIANTS: dict[str, list[str]] = {
    "eikd": [],
    "eikd, masked student softmax": ["loss.class_drop.student=masked"],
    "eikd, prototype score": ["selection.score=prototype"],
    "eikd w/o class-dropping": ["loss.class_drop.enabled=false"],
    "eikd w/o feature loss": ["loss.feature.enabled=false"],
    "eikd w/o relation loss": ["loss.relation.enabled=false"],
    "eikd w/o class balance": ["selection.balance=false"],
    "eikd w/o mixup": ["train.mix=none"],
    "kd (whole pool)": ["method=kd"],
    "random (same size)": ["method=random"],
    "dfnd": ["method=dfnd"],
    "eikd paper (top-confidence selection, KL relation)": ["selection.sampler=top", "loss.relation.kind=kl"],
    "odsd sampling": ["selection.sampler=odsd", "loss.relation.kind=kl"],
    "eikd, contrastive relation": ["selection.sampler=top", "loss.relation.kind=contrastive"],
    "odsd (sampling + contrastive relation)": ["selection.sampler=odsd", "loss.relation.kind=contrastive"],
    "eikd, self-paced curriculum": ["train.curriculum.mode=selfpaced"],
    "kd, self-paced curriculum": ["method=kd", "train.curriculum.mode=selfpaced"],
    "scarce 10%: eikd": [],
    "scarce 10%: kd": ["method=kd"],
    "scarce 10% + synthetic: eikd": [],
    "no field data, synthetic only: eikd": [],
}
SCARCE_FRACTION = 0.1
SYNTHETIC = ["synthesis.count=512", "synthesis.steps=100"]


def pool_for(name: str, workdir: Path) -> Path | None:
    """The field folder a variant trains on: all of it, a fixed 10% subset, or none."""
    if name.startswith("no field data"):
        return None
    if not name.startswith("scarce"):
        return EXAMPLE / "field"
    subset = workdir / "scarce_field"
    if not subset.is_dir():
        files = sorted(p for p in (EXAMPLE / "field").rglob("*.png"))
        rng = random.Random(0)
        for path in rng.sample(files, round(SCARCE_FRACTION * len(files))):
            target = subset / path.relative_to(EXAMPLE / "field")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return subset


def synthetic_overrides(name: str) -> list[str]:
    return SYNTHETIC if "synthetic" in name else []


def run_variant(name: str, overrides: list[str], seed: int, steps: int, workdir: Path, cache: Path | None) -> dict:
    out = workdir / f"{name.replace(' ', '_').replace('/', '').replace(':', '').replace('%', 'pct')}-{seed}"
    field = pool_for(name, workdir)
    if cache is not None and field == EXAMPLE / "field":  # the teacher pass over the full pool never changes
        (out / "cache").mkdir(parents=True, exist_ok=True)
        shutil.copy(cache, out / "cache" / cache.name)
    shared = workdir / "synthetic_shared"
    if synthetic_overrides(name) and shared.is_dir():  # synthesised once; distill reuses it (same manifest)
        shutil.copytree(shared, out / "synthetic", dirs_exist_ok=True)
    recipe = load_recipe(EXAMPLE / "recipe.yaml" if (EXAMPLE / "recipe.yaml").exists() else None,
                         [*synthetic_overrides(name), *overrides, f"train.seed={seed}", f"train.steps={steps}",
                          "train.device=cpu"])  # fmt: skip
    inputs = DistillInputs(EXAMPLE / "teacher.pt", field, EXAMPLE / "val")
    result = distill(inputs, recipe, out, overwrite=True)
    if synthetic_overrides(name) and not shared.is_dir():
        shutil.copytree(out / "synthetic", shared)
    return result.metrics


def time_to_reach(history: list[dict[str, Any]], target: float) -> float | None:
    for record in history:
        if record.get("val_top1", 0.0) >= target:
            return record["wall_s"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (exact)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for every run")
    parser.add_argument("--out", type=Path, default=RESULTS / "digits_openworld.json")
    args = parser.parse_args()
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    variants = {k: [*args.overrides, *v] for k, v in VARIANTS.items() if not args.only or k in args.only}
    workdir = Path(tempfile.mkdtemp(prefix="eikd-bench-"))
    runs: dict[str, list[dict]] = {}
    cache = None
    for name, overrides in variants.items():
        for seed in args.seeds:
            metrics = run_variant(name, overrides, seed, args.steps, workdir, cache)
            if cache is None and pool_for(name, workdir) == EXAMPLE / "field":
                produced = next(workdir.glob("*/cache/teacher_outputs.pt"), None)
                cache = produced
            runs.setdefault(name, []).append(metrics)
            top1, agreement = metrics["student"]["top1"], metrics["agreement"]["top1"]
            print(f"{name} seed {seed}: top1 {top1:.4f} agreement {agreement:.4f} "
                  f"wall {metrics['train']['wall_s']:.1f}s", flush=True)  # fmt: skip
    teacher_top1 = next(iter(runs.values()))[0]["teacher"]["top1"]
    eikd_final = mean_std([m["student"]["top1"] for m in runs.get("eikd", [])])[0] if "eikd" in runs else None
    rows = []
    for name, metrics in runs.items():
        top1 = mean_std([m["student"]["top1"] for m in metrics])
        agreement = mean_std([m["agreement"]["top1"] for m in metrics])
        wall = mean_std([m["train"]["wall_s"] for m in metrics])
        reach = [time_to_reach(m["history"], 0.95 * eikd_final) for m in metrics] if eikd_final else []
        reached = [r for r in reach if r is not None]
        rows.append({
            "variant": name, "top1_mean": top1[0], "top1_std": top1[1], "agreement_mean": agreement[0],
            "agreement_std": agreement[1], "wall_s_mean": wall[0], "train_images": metrics[0]["selection"]["train"],
            "time_to_95pct_eikd_s": (sum(reached) / len(reached)) if reached else None,
            "reached": f"{len(reached)}/{len(reach)}",
            "synthesis_s": max((m.get("synthesis", {}).get("seconds", 0.0) for m in metrics), default=0.0),
        })  # fmt: skip
    summary = {"machine": machine(), "seeds": args.seeds, "steps": args.steps, "teacher_top1": teacher_top1,
               "rows": rows, "runs": runs}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nmachine: {summary['machine']}; teacher top-1 on the handwritten val split: {100 * teacher_top1:.1f}%")
    print(f"{len(args.seeds)} seeds, {args.steps} optimizer steps each\n")
    print("| method | true top-1 (%) | agreement (%) | train images | wall (s) | synthesis (s) "
          "| time to 95% of EIKD (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        reach = (
            f"{r['time_to_95pct_eikd_s']:.1f} ({r['reached']})" if r["time_to_95pct_eikd_s"] else f"— ({r['reached']})"
        )
        print(f"| {r['variant']} | {100 * r['top1_mean']:.1f} ± {100 * r['top1_std']:.1f} | "
              f"{100 * r['agreement_mean']:.1f} ± {100 * r['agreement_std']:.1f} | {r['train_images']} | "
              f"{r['wall_s_mean']:.1f} | {r['synthesis_s'] or 0:.0f} | {reach} |")  # fmt: skip
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
