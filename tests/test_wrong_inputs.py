"""Wrong teachers through the real CLI: exit code 1, one line naming the fix, no traceback; `--debug` shows one.

tests/test_teacher_loading.py checks the messages of load_teacher itself; this file checks what a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.errors import EikdError
from tests.conftest import SPEC, save_torchscript, tiny_classifier, write_sidecar

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_debug_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--debug` sets EIKD_DEBUG in this process; start every test without it and restore it afterwards."""
    monkeypatch.setenv("EIKD_DEBUG", "")


class _Fixed32(nn.Module):
    """Only works on 3x32x32 inputs (a flatten into a Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class _NanOnDarkImages(nn.Module):
    """Finite on the blank dry-run image and on noise, NaN on real images darker than mid-grey (the digits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x).relu().mean(dim=(2, 3))
        dark = x.mean(dim=(1, 2, 3)) < -0.2
        poison = torch.where(dark, torch.full_like(dark, float("nan"), dtype=x.dtype), torch.zeros_like(x[:, 0, 0, 0]))
        return self.fc(features) + poison[:, None]


class _RunsCode:
    """Unpickling this creates a folder: the proof of whether a pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def _wrong_classes(folder: Path) -> tuple[Path, list[str]]:
    path = save_torchscript(tiny_classifier(), folder / "ten_classes.pt")
    write_sidecar(path, {**SPEC, "classes": ["cat", "dog", "bird"]})
    return path, []


def _wrong_input_size(folder: Path) -> tuple[Path, list[str]]:
    path = save_torchscript(_Fixed32().eval(), folder / "fixed32.pt")
    write_sidecar(path, {**SPEC, "input_size": [64, 64]})
    return path, []


def _wrong_input_size_flag(folder: Path) -> tuple[Path, list[str]]:
    path = save_torchscript(_Fixed32().eval(), folder / "fixed32.pt")
    write_sidecar(path)
    return path, ["--input-size", "48"]


def _not_a_model(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "notes.pt"
    path.write_text("these are my notes, not a model\n")
    return path, []


def _unknown_zip(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "bundle.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("bundle/readme.txt", "a zip archive, but not one torch wrote")
    return path, []


def _onnx_file(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x032.1:\x8a\x01\n\x1b\n\x05input" + bytes(range(64)))
    return path, []


def _pickle_untrusted(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "pickled.pt"
    torch.save(_RunsCode(folder / "code_ran"), path)
    write_sidecar(path)
    return path, []


def _nan_on_real_images(folder: Path) -> tuple[Path, list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = save_torchscript(_NanOnDarkImages().eval(), folder / "nan_on_dark.pt")
    write_sidecar(path)
    return path, []


CASES: dict[str, tuple[Callable[[Path], tuple[Path, list[str]]], str]] = {
    "wrong class count": (_wrong_classes, "ten_classes.pt outputs 10 classes but its spec names 3; fix the class list"),
    "wrong input size (sidecar)": (
        _wrong_input_size,
        "failed a dry forward on 3x64x64 inputs (RuntimeError: mat1 and mat2 shapes cannot be multiplied",
    ),
    "wrong input size (flag)": (_wrong_input_size_flag, "failed a dry forward on 3x48x48 inputs (RuntimeError: mat1"),
    "not a model": (_not_a_model, "notes.pt is not a model eikd-edge can read"),
    "unknown format (zip)": (_unknown_zip, "bundle.pt is not a model eikd-edge can read"),
    "unknown format (onnx)": (_onnx_file, "it looks like ONNX, not PyTorch: give the PyTorch model"),
    "pickle without --trust-pickle": (_pickle_untrusted, "re-run with --trust-pickle only if you trust its author"),
    "NaN on real images": (_nan_on_real_images, "teacher nan_on_dark.pt returned NaN or Inf on"),
}


def _select(teacher: Path, pool: Path, out: Path, extra: list[str], debug: bool = False):
    args = ["select", "-t", str(teacher), "-u", str(pool), "-o", str(out), *extra]
    return runner.invoke(app, ["--debug", *args] if debug else args, terminal_width=200)


@pytest.mark.parametrize("case", list(CASES))
def test_wrong_teacher_is_one_line_exit_1(tmp_path: Path, digit_images: Path, case: str) -> None:
    make, expected = CASES[case]
    teacher, extra = make(tmp_path)
    out = tmp_path / "out"
    result = _select(teacher, digit_images, out, extra)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert not (out / "selection.json").exists()  # nothing half-made is left to be mistaken for a result
    assert not (tmp_path / "code_ran").exists()

    # --debug: the same error, raised with its traceback instead of the one-line message
    debug = _select(teacher, digit_images, out, extra, debug=True)
    assert debug.exit_code == 1
    assert isinstance(debug.exception, EikdError) and expected in str(debug.exception)
    assert debug.exc_info is not None and debug.exc_info[2] is not None
    assert not (tmp_path / "code_ran").exists()


def test_trust_pickle_really_runs_the_code(tmp_path: Path, digit_images: Path) -> None:
    """The control for the case above: with --trust-pickle the same file does run code, so its absence proved it."""
    teacher, _ = _pickle_untrusted(tmp_path)
    result = _select(teacher, digit_images, tmp_path / "out", ["--trust-pickle"])
    assert (tmp_path / "code_ran").is_dir()
    assert result.exit_code == 1 and "holds a NoneType, not a model" in result.output


def test_nan_teacher_is_finite_on_the_dry_run(tmp_path: Path) -> None:
    """The NaN teacher passes loading (blank and noise inputs); only the real pool exposes it."""
    from eikd_edge.models.teacher import load_teacher

    teacher = load_teacher(_nan_on_real_images(tmp_path)[0])
    logits, _ = teacher.predict(torch.zeros(2, 3, 32, 32))
    assert torch.isfinite(logits).all()
    assert not torch.isfinite(teacher.predict(torch.full((1, 3, 32, 32), -1.0))[0]).all()


def test_debug_prints_a_real_traceback(tmp_path: Path) -> None:
    """In a real process (the one-line default is checked above through CliRunner): a Python traceback, exit 1."""
    teacher, _ = _not_a_model(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EIKD_NO_PROGRESS": "1"}
    env.pop("EIKD_DEBUG", None)
    command = [sys.executable, "-m", "eikd_edge", "--debug", "inspect", str(teacher)]
    debug = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "EikdError: notes.pt is not a model" in debug.stderr


def test_sidecar_that_is_not_yaml(tmp_path: Path, digit_images: Path) -> None:
    path = save_torchscript(tiny_classifier(), tmp_path / "teacher.pt")
    path.with_suffix(".yaml").write_text("input_size: [32, 32\nclasses: {{{\n")
    result = _select(path, digit_images, tmp_path / "out", [])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: cannot read sidecar") and "line 2, column 8" in lines[0]
    assert lines[0].endswith("fix the sidecar or pass --input-size/--mean/--std/--classes")
