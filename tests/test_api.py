"""The Python API: `eikd_edge`'s names are the very functions the commands call, imported lazily, and the README's
example runs as written."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import eikd_edge
from eikd_edge.cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits"
HOMES = {
    "load_teacher": "eikd_edge.models.teacher",
    "load_recipe": "eikd_edge.config",
    "DistillInputs": "eikd_edge.distill",
    "distill": "eikd_edge.distill",
    "ExportRequest": "eikd_edge.export.pipeline",
    "export_run": "eikd_edge.export.pipeline",
    "validate_run": "eikd_edge.validate",
}

runner = CliRunner()


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """`python -c CODE` in a fresh interpreter (import order and sys.modules are the point), on this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_import_eikd_edge_does_not_import_torch() -> None:
    done = _python("import eikd_edge, sys; assert 'torch' not in sys.modules")
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_name_is_the_object_in_its_home_module() -> None:
    assert sorted(eikd_edge.__all__) == sorted(["__version__", *HOMES])
    for name, home in HOMES.items():
        assert getattr(eikd_edge, name) is getattr(importlib.import_module(home), name), name
        assert getattr(eikd_edge, name).__doc__, name
    assert set(HOMES) <= set(dir(eikd_edge))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        eikd_edge.nope  # noqa: B018


@pytest.mark.parametrize(
    "code",
    [
        # the function asked for first, the module imported afterwards
        "from eikd_edge import DistillInputs, distill\nimport eikd_edge.distill",
        # the module imported first (as the package's own code does), the function asked for afterwards
        "import eikd_edge.distill\nfrom eikd_edge.distill import DistillInputs, DistillResult\n"
        "from eikd_edge import distill",
    ],
    ids=["function-first", "module-first"],
)
def test_distill_is_the_function_and_its_module_stays_importable(code: str) -> None:
    checks = (
        "import sys, types, eikd_edge\n"
        "module = sys.modules['eikd_edge.distill']\n"
        "assert isinstance(module, types.ModuleType) and module.__name__ == 'eikd_edge.distill'\n"
        "assert callable(distill) and distill is module.distill and eikd_edge.distill is module.distill\n"
        "assert DistillInputs is module.DistillInputs\n"
    )
    done = _python(f"{code}\n{checks}")
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("load_teacher", ["inspect", str(EXAMPLE / "teacher.pt")]),
        ("load_recipe", ["distill", "-t", str(EXAMPLE / "teacher.pt"), "-u", str(EXAMPLE / "field"), "-o", "OUT"]),
        ("distill", ["distill", "-t", str(EXAMPLE / "teacher.pt"), "-u", str(EXAMPLE / "field"), "-o", "OUT"]),
        ("export_run", ["export", "OUT", "--onnx"]),
        ("validate_run", ["validate", "OUT"]),
    ],
)
def test_the_commands_call_the_exported_functions(
    name: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaced in its home module, the function is what the command runs: the CLI and the API share it."""
    from eikd_edge.errors import EikdError

    def called(*_args: object, **_kwargs: object) -> None:
        raise EikdError(f"the command called {name}")

    monkeypatch.setattr(importlib.import_module(HOMES[name]), name, called)
    result = runner.invoke(app, [str(tmp_path) if a == "OUT" else a for a in args], terminal_width=200)
    assert result.exit_code == 1 and f"the command called {name}" in result.output, result.output


def readme_example() -> str:
    """The one python block of the README's "Python API" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


def test_the_readme_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's code, unchanged, from a folder whose examples/digits is the bundled example cut down (the same
    teacher, 240 of its field images, 4 val images per class), so the example's 10 epochs take seconds."""
    small = tmp_path / "examples" / "digits"
    (small / "field").mkdir(parents=True)
    for name in ("teacher.pt", "teacher.yaml"):
        shutil.copy2(EXAMPLE / name, small / name)
    for image in sorted((EXAMPLE / "field").iterdir())[:240]:
        shutil.copy2(image, small / "field" / image.name)
    for label in sorted(p for p in (EXAMPLE / "val").iterdir() if p.is_dir()):
        (small / "val" / label.name).mkdir(parents=True)
        for image in sorted(label.iterdir())[:4]:
            shutil.copy2(image, small / "val" / label.name / image.name)
    monkeypatch.chdir(tmp_path)

    exec(compile(readme_example(), "README.md (Python API)", "exec"), {"__name__": "readme_example"})

    out = capsys.readouterr().out
    assert "teacher: 10 classes, input (32, 32)" in out and "student top-1 on val: " in out
    onnx = re.search(r"^onnx: ok, agrees with the student on (\d+\.\d)%$", out, flags=re.MULTILINE)
    assert onnx and float(onnx.group(1)) >= 99.0, out
    run = tmp_path / "runs" / "api"
    assert json.loads((run / "metrics.json").read_text())["train"]["epochs"] == 10
    assert (run / "export" / "student.onnx").is_file()
    assert json.loads((run / "validate.json").read_text())["passed"] is True
