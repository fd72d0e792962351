"""At 80 columns (logs, CI, pipes): tables fit without dropping a column, and a command meant to be copied stays on
one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_fixture import FixtureRun, fresh_run
from typer.testing import CliRunner

from eikd_edge.cli import app

runner = CliRunner()
NARROW = {"COLUMNS": "80"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[FixtureRun, str]:
    """`export RUN --onnx --int8 --trt` with no --target: ONNX Runtime artifacts plus a TensorRT build script."""
    run = fresh_run(tmp_path_factory, "narrow")
    result = runner.invoke(app, ["export", str(run.root), "--onnx", "--int8", "--trt", "--threads", "1"], env=NARROW)
    return run, result.output


def _long_lines(output: str, allowed: tuple[str, ...] = ()) -> list[str]:
    return [line for line in output.splitlines() if len(line) > 80 and not line.lstrip().startswith(allowed)]


def test_trt_without_target_builds_for_a_desktop_gpu(exported: tuple[FixtureRun, str]) -> None:
    run, output = exported
    assert "Export for x86-dgpu" in output, output
    assert "target x86-cpu runs ONNX Runtime" not in output
    assert (run.root / "export" / "build_engine.sh").is_file()


def test_export_table_fits_80_columns_and_the_build_command_is_intact(exported: tuple[FixtureRun, str]) -> None:
    run, output = exported
    assert _long_lines(output, ("cd ",)) == [], output
    for column in ("artifact", "prec", "size", "build s", "agree S", "agree T", "status"):
        assert column in output
    assert "…" not in output  # no truncated cell
    command = f"cd {run.root / 'export'} && ./build_engine.sh"
    assert any(line.strip() == command for line in output.splitlines()), output


def test_validate_and_bench_fit_80_columns_without_dropping_a_column(exported: tuple[FixtureRun, str]) -> None:
    run, _ = exported
    result = runner.invoke(app, ["validate", str(run.root), "--threads", "1", "--val", str(run.val)], env=NARROW)
    assert result.exit_code in (0, 2), result.output
    assert _long_lines(result.output) == [], result.output
    for column in ("agree S", "agree T", "flips", "Δprob", "Δlogit", "top-1", "status"):
        assert column in result.output
    args = ["bench", str(run.root), "--batch", "1", "--iters", "3", "--warmup", "1", "--threads", "1"]
    result = runner.invoke(app, [*args, "--backends", "torch,ort", "--budget-s", "5"], env=NARROW)
    assert result.exit_code == 0, result.output
    assert _long_lines(result.output) == [], result.output
    for column in ("backend", "model", "prec", "batch", "p50", "p90", "p99", "mean ± std", "img/s", "size", "agree T"):
        assert column in result.output, column
    assert "…" not in result.output


def test_print_command_never_wraps_a_command(tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    from eikd_edge.console import print_command

    out = Console(file=StringIO(), width=80)
    command = f"eikd-edge export {tmp_path / ('a-rather-long-run-folder-name-' * 3)} --onnx --int8"
    print_command("next:", command, out)
    assert out.file.getvalue().strip() == f"next: {command}"


def test_report_terminal_tables_stack_without_dropping_or_folding_a_column(exported: tuple[FixtureRun, str]) -> None:
    """At 60 columns (narrower than the report's tables) every column is still there, each header on one line."""
    run, _ = exported
    args = ["bench", str(run.root), "--batch", "1", "--iters", "3", "--warmup", "1", "--threads", "1"]
    assert runner.invoke(app, [*args, "--backends", "torch,ort", "--budget-s", "5"], env=NARROW).exit_code == 0
    result = runner.invoke(app, ["report", str(run.root)], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if len(line) > 60] == [], result.output
    for column in ("params", "MACs", "file size", "backend", "precision", "batch", "iters", "p50 ms", "speed-up"):
        assert column in result.output, column
    assert "…" not in result.output
