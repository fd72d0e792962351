"""digits-openworld: the bundled example (examples/digits) as a benchmark task.

Nothing is regenerated: the task points at the example's teacher, field and val folders. Its folder holds the
truth in the benchmarks' common form (path,kind,label,source) and the teacher's training split as PNGs (so
the leak check can compare pixels).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.task_common import ROOT, TRUTH_FIELDS, digits_builder, read_truth, write_image_folder

EXAMPLE = ROOT / "examples" / "digits"
KIND = {"digit": "in-class", "letter": "distractor", "photo": "distractor", "noise": "noise"}


def build(out: Path, scale: float = 1.0, teacher_epochs: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Write the common-form truth and the teacher's train split; scale and teacher_epochs do not apply."""
    del scale, teacher_epochs, seed  # the example is built once, by examples/digits/build.py
    build = digits_builder()
    split = build.load_digit_split()
    levels = split["images"][split["train"]]
    pixels = build.LEVEL_TO_U8[levels.astype(np.int64)]
    names = [build.CLASSES[t] for t in split["target"][split["train"]]]
    write_image_folder(out / "train", pixels, names)
    rows = read_truth(EXAMPLE / "field_truth.csv")
    with open(out / "field_truth.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(TRUTH_FIELDS)
        for row in rows:
            label = row["label"] if row["kind"] == "digit" else ""
            writer.writerow([row["filename"], KIND[row["kind"]], label, f"{row['kind']}:{row['source']}"])
    example = json.loads((EXAMPLE / "manifest.json").read_text())
    kinds = {kind: sum(1 for r in rows if KIND[r["kind"]] == kind) for kind in ("in-class", "distractor", "noise")}
    return {
        "classes": list(build.CLASSES),
        "counts": {"train": len(names), "val": example["val"]["per_class"], "field": kinds},
        "teacher_epochs": example["teacher"]["epochs"],
        "flip": False,
        "generation": {"source": "examples/digits (built by examples/digits/build.py)", "example": example["command"]},
    }


def paths() -> dict[str, Path]:
    return {"teacher": EXAMPLE / "teacher.pt", "field": EXAMPLE / "field", "val": EXAMPLE / "val"}
