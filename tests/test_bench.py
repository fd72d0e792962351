"""bench: real torch and ONNX Runtime models on real field images; statistics, budget, skipped backends, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from run_fixture import FixtureRun, fresh_run
from typer.testing import CliRunner

from eikd_edge.bench import BenchOptions, bench_run
from eikd_edge.bench_result import BenchResult
from eikd_edge.cli import app
from eikd_edge.latency import latency_stats, time_calls

runner = CliRunner()
FAST = BenchOptions(batches=(1, 4), warmup=2, iters=12, budget_s=20.0, threads=1)


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    run = fresh_run(tmp_path_factory, "bench-run")
    result = runner.invoke(app, ["export", str(run.root), "--onnx", "--threads", "1"], terminal_width=120)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def measured(onnx_run: FixtureRun) -> BenchResult:
    return bench_run(onnx_run.run, FAST)


def test_every_model_gets_sane_complete_statistics(measured: BenchResult) -> None:
    ok = [r for r in measured.rows if r.ok]
    assert {(r.model, r.backend, r.batch) for r in ok} == {
        (model, backend, batch)
        for model, backend in (("teacher", "torch"), ("pytorch", "torch"), ("onnx", "ort"))
        for batch in (1, 4)
    }
    for row in ok:
        lat = row.latency_ms
        assert lat is not None and 0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99 <= lat.max
        assert lat.mean > 0 and lat.std >= 0
        assert row.iters == row.iters_requested == 12 and not row.budget_exhausted and row.warmup == 2
        assert row.images_per_s == pytest.approx(row.batch * 1000.0 / lat.mean, rel=1e-6)
        assert row.threads == 1 and row.device == "cpu" and row.size_bytes and row.size_bytes > 0
        assert row.device_ms is None  # CUDA-event compute time exists only for torch on a GPU
    onnx = next(r for r in ok if r.model == "onnx")
    assert onnx.agree_student == 1.0 and 0.0 <= onnx.agree_teacher <= 1.0  # from export.json parity
    assert measured.images == {"source": "field pool (gate split)", "n": 4, "tiled_to_batch": True}
    assert measured.machine["cpu_count"] >= 1 and measured.machine["torch"]


def test_preprocessing_is_timed_on_the_same_files_with_the_students_policy(measured: BenchResult) -> None:
    assert [p.batch for p in measured.preprocess] == [1, 4]
    for timing in measured.preprocess:
        assert timing.policy == "shorter side to 32, centre crop 32x32, bilinear"
        assert timing.iters == 12 and not timing.budget_exhausted and timing.latency_ms.p50 > 0
        assert timing.images_per_s == pytest.approx(timing.batch * 1000.0 / timing.latency_ms.mean, rel=1e-6)


def test_missing_backends_are_skipped_rows_not_errors(measured: BenchResult) -> None:
    skipped = {r.backend: r.status for r in measured.rows if not r.ok}
    assert set(skipped) == {"ort-int8", "trt"}
    assert skipped["ort-int8"].startswith("skipped: not exported") and "--int8" in skipped["ort-int8"]
    assert skipped["trt"].startswith("skipped: ")


def test_bench_json_round_trips(measured: BenchResult, onnx_run: FixtureRun) -> None:
    data = json.loads((onnx_run.root / "bench.json").read_text())
    assert BenchResult.model_validate(data) == measured
    assert data["settings"]["batches"] == [1, 4] and data["settings"]["budget_s"] == 20.0
    speedups = measured.speedups()
    assert speedups[("pytorch", 1)] == pytest.approx(1.0) and speedups[("onnx", 4)] > 0


def test_budget_stops_iterating_and_is_recorded(onnx_run: FixtureRun) -> None:
    options = BenchOptions(batches=(1,), backends=("ort",), warmup=0, iters=100_000, budget_s=0.3, threads=1)
    start = time.perf_counter()
    result = bench_run(onnx_run.run, options)
    assert time.perf_counter() - start < 15
    (row,) = [r for r in result.rows if r.ok]
    assert 1 <= row.iters < 100_000 and row.budget_exhausted and row.iters_requested == 100_000
    # the budget is checked between calls: it overruns by at most about one call, however loaded the machine is
    assert row.latency_ms is not None and row.elapsed_s < 0.3 + 1.0 + 2 * row.latency_ms.max / 1000


def test_time_calls_budget_warmup_and_at_least_one_sample() -> None:
    calls: list[int] = []

    def nap() -> None:
        calls.append(1)
        time.sleep(0.01)

    timing = time_calls(nap, warmup=3, iters=1000, budget_s=0.15)
    assert timing.warmup == 3 and timing.budget_exhausted and 1 <= len(timing.samples_s) < 20
    assert len(calls) == timing.warmup + len(timing.samples_s)
    once = time_calls(nap, warmup=5, iters=10, budget_s=1e-9)
    assert once.warmup <= 1 and len(once.samples_s) == 1 and once.budget_exhausted


def test_latency_stats_are_percentiles_in_ms() -> None:
    stats = latency_stats([0.001] * 98 + [0.010, 0.100])
    assert stats.p50 == pytest.approx(1.0) and stats.min == pytest.approx(1.0) and stats.max == pytest.approx(100.0)
    assert stats.p50 <= stats.p90 <= stats.p99 <= stats.max and stats.mean == pytest.approx(2.08)


def test_bench_cli_prints_the_table(onnx_run: FixtureRun) -> None:
    args = ["bench", str(onnx_run.root), "--batch", "1,2", "--backends", "torch,ort,trt", "--iters", "5"]
    result = runner.invoke(app, [*args, "--warmup", "1", "--threads", "1", "--without-teacher"], terminal_width=160)
    assert result.exit_code == 0, result.output
    for text in ("p50", "p99", "img/s", "agree T", "pytorch", "onnx", "skipped", "bench.json"):  # 80 columns
        assert text in result.output
    assert "before these times, field files to inputs (shorter side to 32" in " ".join(result.output.split())
    rows = json.loads((onnx_run.root / "bench.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"pytorch", "onnx", "trt-*"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "tflite"], "unknown backend"),
        (["--batch", "1,x"], "comma-separated integers"),
        (["--batch", "0"], "positive batch"),
    ],
)
def test_bad_options_are_one_line_user_errors(onnx_run: FixtureRun, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bench", str(onnx_run.root), *args])
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_run_folder_is_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "run folder not found" in result.output and len(result.output.strip().splitlines()) == 1
