"""The command line itself: fast start-up, one way to write options and defaults, one style of error, 80 columns."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eikd_edge.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (
    "distill",
    "select",
    "quickstart",
    "synthesize",
    "export",
    "validate",
    "bench",
    "report",
    "models",
    "inspect",
)
NARROW = {"COLUMNS": "80"}


def _help(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], env=NARROW)
    assert result.exit_code == 0, result.output
    return result.output


# --- start-up: --help, --version and usage errors import no torch ----------------------------------------------------

_PROBE = """
import sys
from eikd_edge.cli import app
try:
    app(sys.argv[1:], prog_name="eikd-edge")
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "torchvision", "onnxruntime", "onnx", "numpy", "matplotlib") if m in sys.modules]
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize(
    "args",
    [["--version"], ["--help"], ["export", "--help"], ["distill", "--help"], ["expot"], ["distill", "--epoch", "3"]],
)
def test_help_version_and_usage_errors_import_no_heavy_library(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert "HEAVY:" in done.stdout, done.stderr
    assert done.stdout.rsplit("HEAVY:", 1)[1].strip() == ""


# --- help: no type placeholders, every default shown one way, one vocabulary ------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_type_placeholders_and_fits_80_columns(command: str) -> None:
    text = _help(command)
    assert not re.search(r"<(bool|str|int|float|path|list\[str\])>", text), text
    assert max(len(line) for line in text.splitlines()) <= 80


def _option_defaults(command: str) -> dict[str, str | None]:
    """Each option of `command` mapped to the `[default: …]` text of its help row (None when it has none)."""
    rows: dict[str, str | None] = {}
    current = None
    for line in _help_wide(command).splitlines():
        match = re.match(r"^│\s+(--[a-z0-9-]+)", line)
        if match:
            current = match.group(1)
            rows[current] = None
        if current and "[default:" in line:
            rows[current] = line.split("[default:", 1)[1].split("]", 1)[0].strip()
    return rows


def _help_wide(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    return result.output


@pytest.mark.parametrize(
    ("command", "option", "default"),
    [
        ("distill", "--method", "eikd"),
        ("distill", "--select", "odsd"),
        ("distill", "--relation", "contrastive"),
        ("distill", "--curriculum", "none"),
        ("distill", "--student", "cifar_resnet8"),
        ("distill", "--device", "auto"),
        ("select", "--select", "odsd"),
        ("synthesize", "--batch-size", "128"),
        ("synthesize", "--steps", "200"),
        ("export", "--gate", "0.99"),
        ("export", "--threads", "0"),
        ("export", "--target", "x86-cpu; x86-dgpu with --trt"),
        ("validate", "--gate", "0.99"),
        ("bench", "--with-teacher", "--with-teacher"),
        ("bench", "--budget-s", "30.0"),
    ],
)
def test_defaults_are_shown_the_same_way(command: str, option: str, default: str) -> None:
    assert _option_defaults(command)[option] == default


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_with_a_default_shows_it(command: str) -> None:
    import typer.main

    group = typer.main.get_command(app)
    sub = group.get_command(group.make_context("eikd-edge", [command, "--help"], resilient_parsing=True), command)
    shown = _option_defaults(command)
    for param in sub.params:
        if param.param_type_name == "option" and param.default not in (None, False, (), []):
            assert shown[param.opts[0]] is not None, f"{command} {param.opts[0]} has a default but --help hides it"


def test_recipe_backed_defaults_match_the_recipe() -> None:
    from eikd_edge.bench import BACKENDS
    from eikd_edge.commands import bench_cmd, distill_cmd, export_cmd, synthesize_cmd, validate_cmd
    from eikd_edge.config import Recipe
    from eikd_edge.export.parity import DEFAULT_GATE, MAX_IMAGES
    from eikd_edge.export.targets import DEFAULT_TARGET, load_target

    recipe = Recipe()
    assert recipe.method == distill_cmd.DEFAULT_METHOD
    assert recipe.selection.sampler == distill_cmd.DEFAULT_SAMPLER
    assert recipe.loss.relation.kind == distill_cmd.DEFAULT_RELATION
    assert recipe.train.curriculum.mode == distill_cmd.DEFAULT_CURRICULUM
    assert recipe.student.arch == distill_cmd.DEFAULT_STUDENT
    assert (
        recipe.synthesis.steps,
        recipe.synthesis.batch_size,
    ) == (synthesize_cmd.DEFAULT_STEPS, synthesize_cmd.DEFAULT_BATCH_SIZE)
    assert recipe.train.device == "auto"
    assert export_cmd.DEFAULT_TARGET == DEFAULT_TARGET
    assert load_target(export_cmd.DEFAULT_TRT_TARGET).backend == "tensorrt"
    assert (validate_cmd.DEFAULT_GATE, validate_cmd.MAX_IMAGES) == (DEFAULT_GATE, MAX_IMAGES)
    assert bench_cmd.BACKENDS == BACKENDS


def test_one_vocabulary_across_commands() -> None:
    bench = _help_wide("bench")
    assert "--with-teacher" in bench and "--without-teacher" in bench
    assert not re.search(r"--teacher\b", bench) and "--no-teacher" not in bench  # --teacher is a file everywhere
    for command in ("select", "distill", "synthesize"):
        assert re.search(r"--teacher\s+-t\s+PATH", _help_wide(command))
    threads = {}
    for command in ("export", "validate", "bench"):
        row = re.search(r"--threads.*", _help_wide(command)).group(0).split("│")[0]
        threads[command] = " ".join(row.split())
    assert len(set(threads.values())) == 1 and "0 = one per core" in threads["bench"], threads
    for command in ("distill", "synthesize", "bench"):
        assert "--device" in _help_wide(command)


def test_distill_device_reaches_the_recipe(script_teacher: Path, digit_images: Path, tmp_path: Path) -> None:
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(tmp_path / "r")]
    result = runner.invoke(app, [*args, "--device", "tpu"])
    assert result.exit_code == 1 and "train.device" in result.output and "tpu" in result.output
    assert not (tmp_path / "r").exists()


def test_export_help_says_which_target_trt_builds_for() -> None:
    text = " ".join(_help_wide("export").split())
    assert "x86-dgpu when no --target is given" in text


# --- errors: Typer's usage errors in the one-line style ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["expot"], "No such command 'expot'"),
        (["distill", "--epoch", "3"], "No such option: --epoch"),
        (["distill"], "Missing option '--teacher'"),
        (["export"], "Missing argument 'RUN'"),
        (["bench", "x", "--iters", "many"], "Invalid value for '--iters'"),
    ],
)
def test_usage_errors_are_one_error_line_exit_1(args: list[str], says: str) -> None:
    result = runner.invoke(app, args, env=NARROW)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.output
    assert "╭" not in result.output and "Usage:" not in result.output


def test_readme_and_help_give_the_same_quickstart_time() -> None:
    help_time = re.search(r"\(([^)]*minutes?[^)]*)\)", " ".join(_help_wide("quickstart").split())).group(1)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert help_time in readme, help_time
    assert "a few minutes on a CPU" not in readme


def test_every_output_pasted_in_the_readme_is_regenerated_by_the_script() -> None:
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")
    script = (ROOT / "scripts" / "readme_outputs.sh").read_text().replace("$ex", "examples/digits")
    steps = {" ".join(line.split()[2:]) for line in script.splitlines() if line.startswith("step ")}
    pasted = [
        line[len("$ eikd-edge ") :].split("#")[0] for line in readme.splitlines() if line.startswith("$ eikd-edge ")
    ]
    commands = {" ".join(c.split()) for c in pasted if "..." not in c}
    assert commands and commands <= steps, commands - steps
