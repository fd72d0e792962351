"""A normal (non-editable) install exports: build the wheel, install it into a fresh venv that cannot see the source
tree, and run `eikd-edge export RUN --onnx --int8` on a fixture run from a temporary working directory.

The venv reuses this interpreter's site-packages through a .pth path line (torch is not downloaded again); a path
line does not run the .pth files found there, so an editable install of the source tree stays invisible.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from run_fixture import fresh_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 900) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _build_wheel(out: Path) -> Path:
    """Built from a copy of the source tree: setuptools writes build/ beside pyproject.toml, and tests leave
    nothing in the repository."""
    source = out / "source"
    skip = (".git", ".venv", "build", "dist", "*.egg-info", "runs", "__pycache__", ".*cache", "benchmarks", "examples")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*skip))
    # Without setuptools here, pip fetches it into an isolated build environment.
    flags = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *flags, str(source), "-w", str(out), "-q"], cwd=out)
    return next(out.glob("eikd_edge-*.whl"))


def test_wheel_ships_the_target_profiles_and_the_device_helper(tmp_path: Path) -> None:
    names = zipfile.ZipFile(_build_wheel(tmp_path)).namelist()
    assert "eikd_edge/resources/targets/x86-cpu.yaml" in names
    assert "eikd_edge/resources/targets/jetson-orin-nano.yaml" in names
    assert "eikd_edge/resources/device/eikd_device.py" in names  # copied next to build_engine.sh by export --trt


def test_installed_wheel_exports_onnx_and_int8(tmp_path_factory: pytest.TempPathFactory) -> None:
    work = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(work)
    venv = work / "venv"
    # No PYTHONPATH: with the source tree on it, pip would find its egg-info and skip the wheel as installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EIKD_TARGETS_DIR")}
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work, env=env)
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work, env=env)
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=work, env=env)
    # After the install: pip would otherwise take the source tree's editable eikd-edge for the wheel's.
    Path(purelib.strip(), "parent-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    run = fresh_run(tmp_path_factory, "wheel-run")
    cwd = tmp_path_factory.mktemp("elsewhere")  # neither the source tree nor its parent
    where = _run([str(python), "-c", "import eikd_edge; print(eikd_edge.__file__)"], cwd=cwd, env=env)
    assert Path(where.strip()).is_relative_to(venv), where
    cli = venv / "bin" / "eikd-edge"
    _run([str(cli), "export", str(run.root), "--onnx", "--int8", "--threads", "1"], cwd=cwd, env=env)
    artifacts = json.loads(run.run.export_record.read_text())["artifacts"]
    assert artifacts["onnx"]["status"] == "ok" and artifacts["onnx-int8"]["status"] == "ok"
