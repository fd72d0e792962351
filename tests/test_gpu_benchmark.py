"""benchmarks/gpu.py on the CPU: the quick mode runs both cases end to end through the package's training step
(tiny sizes, same code as on a GPU), and the correctness check's comparison catches a run that diverges."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import gpu
from benchmarks.gpu_cases import CASES, load_case_teacher, sized
from benchmarks.gpu_parity import StepRun, Tolerance, compare_runs, run_steps
from benchmarks.gpu_timing import PHASES
from eikd_edge.models.teacher import TeacherModel

CPU = torch.device("cpu")
QUICK_CIFAR = sized(CASES["cifar32"], quick=True)


def test_quick_mode_runs_both_cases_and_writes_the_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gpu.main(["--device", "cpu", "--quick", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert [row["case"] for row in record["throughput"]] == list(CASES)
    for row in record["throughput"]:
        assert "error" not in row, row.get("traceback")
        m = row["measurement"]
        assert m["img_s"] > 0 and m["steps"] >= 1
        assert math.isfinite(m["loss_first"]) and math.isfinite(m["loss_last"])
        assert set(m["phases"]) == set(PHASES)
        assert all(0.0 <= share <= 1.0 for share in m["phases"].values())
        assert sum(m["phases"].values()) == pytest.approx(1.0, abs=1e-6)
        assert all(ms > 0 for ms in m["phase_ms"].values())  # each phase really was timed
        assert m["peak_gpu_mem_gib"] is None  # no GPU: no figure rather than a made-up one
    assert [row["case"] for row in record["parity"]] == list(CASES)
    for row in record["parity"]:
        assert row["parity"]["passed"] and row["parity"]["steps"] == 2
        assert "CPU" in row["parity"]["note"]  # a CPU-vs-CPU check says it proves nothing about bf16
    table = (tmp_path / "gpu.md").read_text()
    for case in CASES.values():
        title = sized(case, quick=True).title
        assert title in table and title in printed
    assert "| data | teacher | student |" in printed and "weight-update diff" in printed


@pytest.fixture(scope="module")
def cifar_teacher() -> TeacherModel:
    return load_case_teacher(QUICK_CIFAR, seed=0)


def _run(teacher: TeacherModel, overrides: list[str] | None = None, seed: int = 0) -> StepRun:
    return run_steps(QUICK_CIFAR, teacher, CPU, steps=2, seed=seed, overrides=overrides)[0]


def test_comparison_passes_identical_runs_and_fails_diverged_ones(cifar_teacher: TeacherModel) -> None:
    reference = _run(cifar_teacher)
    same = compare_runs(reference, _run(cifar_teacher), Tolerance())
    assert same.passed and same.loss_rel_max == 0.0 and same.update_rel == 0.0

    # 1.5x the learning rate: the first loss is identical, the update is not; the tolerance must notice
    faster = compare_runs(reference, _run(cifar_teacher, ["train.lr=0.0075"]), Tolerance())
    assert not faster.passed
    assert faster.update_rel > Tolerance().update_rtol
    assert any("weight update" in reason for reason in faster.reasons)


def test_comparison_fails_a_non_finite_or_mismatched_run() -> None:
    reference = StepRun("cpu", [2.0, 1.9], torch.ones(10, dtype=torch.float64), 1.0)
    broken = dataclasses.replace(reference, device="cuda:0", losses=[2.0, math.nan])
    assert not compare_runs(reference, broken, Tolerance()).passed
    shorter = dataclasses.replace(reference, losses=[2.0])
    assert not compare_runs(reference, shorter, Tolerance()).passed
    within = dataclasses.replace(reference, losses=[2.01, 1.91], update=torch.full((10,), 1.05, dtype=torch.float64))
    assert compare_runs(reference, within, Tolerance()).passed  # bf16-sized differences pass
    loss_off = compare_runs(reference, dataclasses.replace(reference, losses=[2.0, 2.1]), Tolerance())
    assert not loss_off.passed and loss_off.reasons == ["loss differs by 10.53% (tolerance 3%)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_missing_cuda_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main(["--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no CUDA device is visible")
    assert "--device cpu" in err[0]
    assert not list(tmp_path.iterdir())


def test_batch_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.batch_sizes(["512", "cifar32=2048"], list(CASES)) == {"cifar32": 2048, "imagenet224": 512}
    for bad in (["cifar=64"], ["cifar32=1"], ["lots"]):
        assert gpu.main(["--device", "cpu", "--quick", "--out-dir", str(tmp_path), "--batch", *bad]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --batch")
    assert gpu.main(["--device", "cpu", "--quick", "--out-dir", str(tmp_path), "--set", "train.lrr=1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr" in err[0]
