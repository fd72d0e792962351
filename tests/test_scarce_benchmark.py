"""The scarce-data benchmark's plumbing: pool subsets that nest and stay fixed, and the runs it plans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.scarce import nested_subsets, plan


def _field(root: Path, count: int) -> Path:
    for i in range(count):
        folder = root / f"part{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), i, dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def _names(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}


def test_smaller_subsets_lie_inside_larger_ones_and_do_not_change(tmp_path: Path) -> None:
    field = _field(tmp_path / "field", 50)
    first = nested_subsets(field, [1.0, 0.4, 0.1], tmp_path / "a")
    again = nested_subsets(field, [1.0, 0.4, 0.1], tmp_path / "b")
    assert first[1.0] == (field, 50) and first[0.4][1] == 20 and first[0.1][1] == 5
    assert _names(first[0.1][0]) < _names(first[0.4][0]) < _names(field)
    assert _names(first[0.4][0]) == _names(again[0.4][0])  # fixed: the same subset for every method and seed


def test_plan_runs_each_method_per_share_then_synthesis_alone_and_skips_reused_rows() -> None:
    runs = plan([1.0, 0.1], [512, 2048])
    assert [(row, fraction, n) for row, fraction, n, _ in runs] == [
        ("eikd", 1.0, 0), ("kd", 1.0, 0), ("eikd + synthesis", 1.0, 512),
        ("eikd", 0.1, 0), ("kd", 0.1, 0), ("eikd + synthesis", 0.1, 512),
        ("synthesis only", 0.0, 512), ("synthesis only", 0.0, 2048),
    ]  # fmt: skip
    assert runs[1][3] == ["method=kd"] and "synthesis.count=2048" in runs[-1][3]
    reused = plan([1.0, 0.1], [512], frozenset({"eikd", "kd"}))
    assert [(row, fraction) for row, fraction, _, _ in reused][:2] == [("eikd + synthesis", 1.0), ("eikd", 0.1)]
    pools_only = plan([1.0], [512], frozenset({"eikd", "kd"}), synthesis_only=False)
    assert [(row, fraction) for row, fraction, _, _ in pools_only] == [("eikd + synthesis", 1.0)]
