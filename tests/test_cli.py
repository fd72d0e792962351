"""The CLI through Typer's CliRunner: real commands, real models, exit codes and one-line errors."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from eikd_edge import __version__
from eikd_edge.cli import app

runner = CliRunner()


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("distill", "select", "quickstart", "models", "inspect"):
        assert command in result.stdout


def test_models_lists_zoo_with_params_and_macs() -> None:
    result = runner.invoke(app, ["models", "--input-size", "32"], terminal_width=200)
    assert result.exit_code == 0, result.output
    line = next(row for row in result.stdout.splitlines() if "cifar_resnet8 " in row)
    assert "78.04k" in line and "12.50M" in line  # parameters and MACs of the 10-class cifar_resnet8 at 32x32
    for name in ("mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "resnet34", "efficientnet_b0", "shufflenet"):
        assert name in result.stdout


def test_inspect_shows_spec_and_embedding(script_teacher: Path) -> None:
    result = runner.invoke(app, ["inspect", str(script_teacher)], terminal_width=200)
    assert result.exit_code == 0, result.output
    for text in ("torchscript", "3x32x32", "10: 0, 1, 2", "32-d (penultimate)", "ok"):
        assert text in result.stdout
    assert "hidden by the format" in result.stdout  # a TorchScript teacher without a named architecture


def test_inspect_shows_batchnorm_layers_of_a_named_architecture() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "digits" / "teacher.pt"
    result = runner.invoke(app, ["inspect", str(example)], terminal_width=200)
    assert result.exit_code == 0 and "21 layers visible" in result.stdout


def test_user_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("nope")
    result = runner.invoke(app, ["inspect", str(bogus)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("error:") and "not a model" in result.output


def test_wrong_classes_flag_is_exit_1(script_teacher: Path) -> None:
    result = runner.invoke(app, ["inspect", str(script_teacher), "--classes", "a,b"])
    assert result.exit_code == 1 and "outputs 10 classes" in result.output


def test_usage_errors_exit_1_not_the_gate_code() -> None:
    assert runner.invoke(app, ["no-such-command"]).exit_code == 1
    assert runner.invoke(app, ["models", "--no-such-option"]).exit_code == 1
    assert runner.invoke(app, ["distill"]).exit_code == 1  # missing required options
