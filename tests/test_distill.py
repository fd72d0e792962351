"""End-to-end distillation on real images with tiny real models: artifacts, methods, resume, safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from eikd_edge.checkpoint import load_student
from eikd_edge.cli import app

runner = CliRunner()
FAST = ["train.epochs=2", "train.batch_size=16", "student.width=0.5", "selection.batch_size=64"]


def _sets(extra: list[str] | None = None) -> list[str]:
    return [arg for item in FAST + (extra or []) for arg in ("--set", item)]


def test_distill_cli_writes_the_artifact_contract(
    tmp_path: Path, script_teacher: Path, digit_images: Path, digit_val: Path
) -> None:
    out = tmp_path / "run"
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "--val", str(digit_val), "-o", str(out)]
    result = runner.invoke(app, args + _sets(), terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "agreement with teacher" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("top1",):
        assert isinstance(metrics["teacher"][key], float) and isinstance(metrics["student"][key], float)
    assert 0.0 <= metrics["agreement"]["top1"] <= 1.0
    assert metrics["train"]["wall_s"] > 0 and metrics["train"]["images_per_s"] > 0
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert {"kd", "feature", "relation", "total"} <= set(metrics["history"][0]["loss"])
    selection = json.loads((out / "selection.json").read_text())
    assert selection["pool"]["files"] == 121 and selection["pool"]["decoded"] == 120
    assert selection["pool"]["skipped"]["count"] == 1
    assert selection["pool"]["skipped"]["sample"][0]["path"] == "broken.jpg"
    assert selection["agreement_count"] == 30  # the fixed agreement slice: a quarter of a pool this small
    assert selection["selected_count"] == 45 and len(selection["manifest"]) == 120
    assert selection["train_count"] + selection["holdout_count"] == 45
    resolved = yaml.safe_load((out / "recipe.resolved.yaml").read_text())
    assert resolved["recipe"]["student"]["width"] == 0.5 and resolved["inputs"]["teacher"] == str(script_teacher)
    payload = torch.load(out / "student.pt", weights_only=True)
    assert payload["arch"] == "cifar_resnet8" and payload["classes"] == [str(i) for i in range(10)]
    student = load_student(out / "student.pt")
    assert student.model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert (out / "cache" / "teacher_outputs.pt").is_file()


def test_second_run_refuses_then_resume_and_overwrite(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    out = tmp_path / "run"
    base = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(out), *_sets(), "--keep-state"]
    assert runner.invoke(app, base).exit_code == 0
    before = (out / "student.pt").read_bytes()
    refused = runner.invoke(app, base)
    assert refused.exit_code == 1 and "already holds a run" in refused.output
    assert (out / "student.pt").read_bytes() == before  # nothing lost
    resumed = runner.invoke(app, [*base, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert runner.invoke(app, [*base, "--overwrite"]).exit_code == 0
    changed = runner.invoke(app, [*base, "--resume", "--set", "train.lr=0.01"])
    assert changed.exit_code == 1 and "different recipe" in changed.output


@pytest.mark.parametrize("method", ["kd", "random", "dfnd"])
def test_baselines_run_in_the_same_engine(
    tmp_path: Path, script_teacher: Path, digit_images: Path, method: str
) -> None:
    out = tmp_path / method
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(out), "--method", method]
    result = runner.invoke(app, args + _sets(["train.epochs=1"]))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    selection = json.loads((out / "selection.json").read_text())
    losses = set(metrics["history"][0]["loss"])
    if method == "kd":
        assert selection["selected_count"] == 90 and losses == {"kd", "total"}  # all but the agreement slice
    elif method == "random":
        assert selection["selected_count"] == 45 and {"feature", "relation"} <= losses
    else:
        assert selection["selected_count"] == 45 and losses == {"kd", "noise", "total"}


def test_ablation_switches_remove_terms(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    out = tmp_path / "ablate"
    extra = ["train.epochs=1", "loss.feature.enabled=false", "loss.relation.enabled=false"]
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(out)]
    assert runner.invoke(app, args + _sets(extra)).exit_code == 0
    assert set(json.loads((out / "metrics.json").read_text())["history"][0]["loss"]) == {"kd", "total"}


def test_select_command_reports_classes(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    out = tmp_path / "sel"
    result = runner.invoke(
        app, ["select", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(out)], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    title = "Selection (eikd, odsd sampling, closeness from prototype cosine)"  # the title may wrap
    assert title in " ".join(result.stdout.split()) and "skipped" in result.stdout
    assert json.loads((out / "selection.json").read_text())["selected_count"] == 45


def test_empty_and_all_bad_pools_are_one_line_errors(tmp_path: Path, script_teacher: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["select", "-t", str(script_teacher), "-u", str(empty), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no images found" in result.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.jpg").write_text("text")
    result = runner.invoke(app, ["select", "-t", str(script_teacher), "-u", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "could be read" in result.output


def test_torchrun_two_processes_agree_with_single(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    """DDP on gloo: sharded selection equals the single-process one, and rank 0 writes one valid checkpoint."""
    single = tmp_path / "single"
    args = ["-t", str(script_teacher), "-u", str(digit_images), *_sets(["train.epochs=1", "train.device=cpu"])]
    assert runner.invoke(app, ["select", *args[:4], "-o", str(single)]).exit_code == 0
    env = {**os.environ, "EIKD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    ddp = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "eikd_edge", "distill", *args, "-o", str(ddp)]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    one = json.loads((single / "selection.json").read_text())["manifest"]
    two = json.loads((ddp / "selection.json").read_text())["manifest"]
    assert [(m["path"], m["predicted"], m["selected"]) for m in one] == [
        (m["path"], m["predicted"], m["selected"]) for m in two
    ]
    assert [m["confidence"] for m in one] == pytest.approx([m["confidence"] for m in two], abs=1e-4)
    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2
    assert load_student(ddp / "student.pt").model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert not list(ddp.glob(".*.tmp"))


def test_quickstart_runs_on_the_bundled_example(tmp_path: Path) -> None:
    """The wiring of quickstart (bundled teacher, field pool, val) at a tiny budget; the full run is in the README."""
    out = tmp_path / "qs"
    result = runner.invoke(
        app, ["quickstart", "--out", str(out), "--set", "train.steps=3", "--set", "train.batch_size=32"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["top1"] > 0.95  # the bundled teacher on the handwritten val split
    assert metrics["selection"]["pool_files"] == 2400 and metrics["train"]["steps"] == 3
    assert "classes below quota" in result.stdout and "eikd-edge export" in result.stdout
    not_a_run = tmp_path / "mine"
    not_a_run.mkdir()
    (not_a_run / "precious.txt").write_text("keep me")
    refused = runner.invoke(app, ["quickstart", "--out", str(not_a_run)])
    assert refused.exit_code == 1 and (not_a_run / "precious.txt").read_text() == "keep me"
