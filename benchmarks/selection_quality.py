"""How good is the teacher's selection on the bundled example? Scores each score kind against field_truth.csv.

The tool never reads field_truth.csv; this benchmark does, to show what selection keeps and what it rejects.

    python benchmarks/selection_quality.py
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

from benchmarks.common import EXAMPLE
from eikd_edge.config import load_recipe
from eikd_edge.distill import DistillInputs, run_selection


def main() -> None:
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    truth = {row["filename"]: row for row in csv.DictReader((EXAMPLE / "field_truth.csv").open())}
    out = Path(tempfile.mkdtemp(prefix="eikd-selq-"))
    print("| score | subset | images | printed digits (%) | teacher correct on those digits (%) |")
    print("|---|---|---:|---:|---:|")
    for score in ("confidence", "entropy", "energy", "prototype"):
        recipe = load_recipe(None, [f"selection.score={score}", "train.device=cpu"])
        _, selection = run_selection(DistillInputs(EXAMPLE / "teacher.pt", EXAMPLE / "field"), recipe, out)
        manifest = selection.to_json()["manifest"]
        rows = [("-", "whole pool", manifest)] if score == "confidence" else []
        rows.append((score, "selected", [m for m in manifest if m["selected"]]))
        for label, subset, items in rows:
            digits = [m for m in items if truth[m["path"]]["kind"] == "digit"]
            correct = [m for m in digits if truth[m["path"]]["label"] == m["predicted"]]
            share, right = 100 * len(digits) / len(items), 100 * len(correct) / max(1, len(digits))
            print(f"| {label} | {subset} | {len(items)} | {share:.1f} | {right:.1f} |")


if __name__ == "__main__":
    main()
