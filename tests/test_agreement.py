"""The fixed agreement slice: the same images for every method and seed, never trained on, reported as the
agreement with the teacher; the selection's own held-out number only as a diagnostic; best or last epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eikd_edge.agreement import agreement_slice, ci95, slice_size
from eikd_edge.cli import app
from eikd_edge.config import load_recipe
from eikd_edge.distill import DistillInputs, run_selection
from eikd_edge.distill.evaluate import pick_and_report_halves, pick_score

runner = CliRunner()
FAST = ["train.epochs=2", "train.batch_size=16", "student.width=0.5", "selection.batch_size=64", "train.device=cpu"]


def test_slice_size_is_a_share_raised_on_small_pools_and_capped() -> None:
    assert slice_size(100_000, 0.1, 1000) == 1000
    assert slice_size(5000, 0.1, 1000) == 500
    assert slice_size(1000, 0.1, 1000) == 200  # raised towards 200 images
    assert slice_size(120, 0.1, 1000) == 30  # but never more than a quarter of the pool
    assert slice_size(120, 0.0, 1000) == 0 and slice_size(1, 0.1, 1000) == 0


def test_slice_depends_on_the_paths_only() -> None:
    paths = [f"img{i:04d}.png" for i in range(1000)]
    chosen = agreement_slice(paths, 0.1, 1000)
    assert len(chosen) == 200 and list(chosen) == sorted(chosen)
    shuffled = paths[::-1]
    again = agreement_slice(shuffled, 0.1, 1000)
    assert {shuffled[i] for i in again} == {paths[i] for i in chosen}  # scan order does not matter


def test_ci95_narrows_with_more_images() -> None:
    assert ci95(0.9, 1000) < ci95(0.9, 100) < ci95(0.9, 20)
    assert ci95(None, 100) is None and ci95(0.5, 0) is None


def test_every_method_and_seed_holds_out_the_same_slice_and_never_selects_it(
    tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    slices = set()
    for method in ("eikd", "kd", "random", "dfnd"):
        for seed in (0, 1):
            recipe = load_recipe(None, [*FAST, f"method={method}", f"train.seed={seed}"])
            out = tmp_path / f"{method}-{seed}"
            _, selection, _ = run_selection(DistillInputs(script_teacher, digit_images), recipe, out)
            manifest = json.loads((out / "selection.json").read_text())["manifest"]
            held = tuple(sorted(m["path"] for m in manifest if m["split"] == "agreement"))
            assert len(held) == 30
            assert not any(m["selected"] for m in manifest if m["split"] == "agreement")
            assert set(selection.agreement_indices).isdisjoint(selection.train_indices)
            slices.add(held)
    assert len(slices) == 1


def test_distill_reports_agreement_on_the_fixed_slice_and_both_epochs(
    tmp_path: Path, script_teacher: Path, digit_images: Path, digit_val: Path
) -> None:
    out = tmp_path / "run"
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "--val", str(digit_val), "-o", str(out)]
    sets = [a for item in [*FAST, "train.seed=3"] for a in ("--set", item)]
    result = runner.invoke(app, args + sets, terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # the summary wraps at the console's width
    assert "agreement with teacher (fixed slice)" in text and "on 15 of the 30 field images no method trains on" in text
    assert "the other 15 picked the epoch" in text
    assert "diagnostic only" in text and "train.keep=best" in text
    assert text.endswith(f"next: eikd-edge export {out} --onnx --int8 then: eikd-edge validate {out}")
    metrics = json.loads((out / "metrics.json").read_text())
    agreement = metrics["agreement"]
    assert agreement["on"] == "fixed field slice" and agreement["size"] == 15 and agreement["slice_size"] == 30
    assert 0.0 <= agreement["top1"] <= 1.0 and agreement["ci95"] > 0
    assert agreement["selection_holdout"]["size"] > 0
    assert metrics["seed"] == 3 and metrics["train"]["seed"] == 3
    epochs = metrics["epochs"]
    assert epochs["keep"] == "best" and epochs["picked_by"] == "fixed field slice"
    assert epochs["last"]["epoch"] == 2 and epochs["picked"]["epoch"] in (1, 2)
    assert all(isinstance(epochs[k]["val_top1"], float) for k in ("picked", "last"))
    picked = max(metrics["history"], key=lambda h: (h["agreement_pick"], h["epoch"]))
    assert epochs["picked"]["epoch"] == picked["epoch"]  # the pick follows one half of the fixed slice ...
    assert agreement["top1"] == pytest.approx(picked["agreement_report"])  # ... the figure comes from the other
    for h in metrics["history"]:  # the halves are the slice's two halves: together they make the whole figure
        assert h["agreement"] == pytest.approx((h["agreement_pick"] + h["agreement_report"]) / 2)


def test_keep_last_ships_the_last_epoch(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    out = tmp_path / "run"
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(out)]
    sets = [a for item in [*FAST, "train.keep=last"] for a in ("--set", item)]
    result = runner.invoke(app, args + sets, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "kept the last epoch" in " ".join(result.stdout.split())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student"]["kept_epoch"] == 2 and metrics["epochs"]["keep"] == "last"
    last = metrics["history"][-1]  # nothing was picked: the whole slice reports
    assert metrics["agreement"]["size"] == metrics["agreement"]["slice_size"]
    assert metrics["agreement"]["top1"] == pytest.approx(last["agreement"])
    assert torch.load(out / "student.pt", weights_only=True)["kept_epoch"] == 2


def test_the_slice_splits_into_a_picking_and_a_reporting_half() -> None:
    pick, report = pick_and_report_halves(7)
    assert pick.tolist() == [0, 2, 4, 6] and report.tolist() == [1, 3, 5]
    assert [t.tolist() for t in pick_and_report_halves(1)] == [[0], [0]]


def test_the_pick_looks_only_at_its_own_half() -> None:
    record = {"agreement": 0.9, "agreement_pick": 0.5, "agreement_report": 1.0, "holdout_agreement": 0.7}
    assert pick_score(record, on_slice=True, epoch=3) == 0.5
    assert pick_score(record, on_slice=False, epoch=3) == 0.7
    assert pick_score({**record, "agreement_pick": float("nan")}, on_slice=True, epoch=3) == 3.0


def test_constant_guess_and_near_chance() -> None:
    from eikd_edge.agreement import constant_guess_rate, near_chance

    assert constant_guess_rate(np.array([0, 0, 0, 1, 2, 3, 4, 5, 6, 7])) == 0.3
    assert constant_guess_rate(np.zeros(0, dtype=np.int64)) is None
    assert near_chance(0.175, 0.12) and not near_chance(0.62, 0.12)
    assert not near_chance(None, 0.12) and not near_chance(0.1, None)
    assert near_chance(0.8, 0.7) and not near_chance(0.9, 0.7)  # one dominant class: halfway to 100%
