"""Killed and interrupted runs: SIGKILL mid-run then --resume equals an uninterrupted run; Ctrl-C exits 3 cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import restore_sigint

SETTINGS = ["train.batch_size=16", "student.width=0.5", "train.device=cpu", "selection.batch_size=64",
            "selection.keep_fraction=1.0"]  # fmt: skip
EPOCHS = 10  # long enough that the kill lands mid-run even on a loaded machine


def _command(teacher: Path, pool: Path, out: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    sets = [arg for item in [*SETTINGS, f"train.epochs={epochs}"] for arg in ("--set", item)]
    return [sys.executable, "-m", "eikd_edge", "distill", "-t", str(teacher), "-u", str(pool), "-o", str(out), *sets,
            *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "EIKD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _start_and_wait_for_checkpoint(command: list[str], state: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint
    )
    deadline = time.monotonic() + 240
    while not state.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint appeared: {process.stderr.read()[-1500:] if process.stderr else ''}")
        time.sleep(0.02)
    return process


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    reference = tmp_path / "reference"
    done = subprocess.run(_command(script_teacher, digit_images, reference), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
    assert not list((reference / "cache").glob("images-*")), "a finished run keeps no decoded images"
    killed = tmp_path / "killed"
    process = _start_and_wait_for_checkpoint(_command(script_teacher, digit_images, killed), killed / "train_state.pt")
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_epochs = torch.load(killed / "train_state.pt", weights_only=True)["epoch"] + 1
    assert interrupted_epochs < EPOCHS, "the run finished before it could be killed"
    assert not (killed / "metrics.json").exists()
    decoded = (killed / "cache" / "images-train.u8").stat()
    stored = json.loads((killed / "cache" / "images-train.json").read_text())
    channels, height, width = stored["shape"]
    assert decoded.st_size == stored["count"] * channels * height * width > 0, "the kill left a partial decoded file"
    resumed = subprocess.run(
        _command(script_teacher, digit_images, killed, "--resume", "--keep-state"),
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    reused = (killed / "cache" / "images-train.u8").stat()
    assert (reused.st_ino, reused.st_mtime_ns) == (decoded.st_ino, decoded.st_mtime_ns), "resume decoded again"
    expected = json.loads((reference / "metrics.json").read_text())
    actual = json.loads((killed / "metrics.json").read_text())
    assert len(actual["history"]) == EPOCHS
    for want, got in zip(expected["history"], actual["history"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-5)
        assert got["agreement"] == pytest.approx(want["agreement"], abs=1e-6)
    assert actual["agreement"] == expected["agreement"]


def test_ctrl_c_exits_3_with_checkpoint_intact(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    out = tmp_path / "run"
    command = _command(script_teacher, digit_images, out, epochs=1000)  # it can only end by the interrupt
    process = _start_and_wait_for_checkpoint(command, out / "train_state.pt")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-1500:]
    assert "--resume" in stderr and "Traceback" not in stderr
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["epoch"] >= 0
    student = torch.load(out / "student.pt", weights_only=True)
    assert student["format"] == "eikd-edge/student"
