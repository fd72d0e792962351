"""Shared fixtures: tiny real models and real small images, built in temp folders (never downloaded)."""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from eikd_edge.models.zoo import build_model

os.environ.setdefault("EIKD_NO_PROGRESS", "1")
torch.set_num_threads(1)  # tiny models: threads cost more than they give, and tests share the CPU

SPEC = {"input_size": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "classes": [str(i) for i in range(10)]}


@pytest.fixture(scope="session", autouse=True)
def _session_cache_home(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Session fixtures that run commands write the shared score cache into a temp folder, never ~/.cache."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-session"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(autouse=True)
def _own_cache_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own $XDG_CACHE_HOME: one test's shared score cache never serves another."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


def restore_sigint() -> None:
    """preexec_fn for a child the test will Ctrl-C: a shell that starts jobs in the background (as CI runners and
    `cmd &` do) leaves SIGINT ignored, which Python inherits and never turns into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_sidecar(model_path: Path, spec: dict | None = None) -> None:
    model_path.with_suffix(".yaml").write_text(yaml.safe_dump(spec or SPEC))


def tiny_classifier(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("cifar_resnet8", 10, width=0.5).eval()


def save_torchscript(model: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(path))
    return path


@pytest.fixture(scope="session")
def digit_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 real handwritten digits (scikit-learn's bundled set) as 8x8 PNGs, plus one broken file."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("pool")
    digits = load_digits()
    for i in range(120):
        pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    (folder / "broken.jpg").write_text("this is not a jpeg")
    return folder


@pytest.fixture(scope="session")
def digit_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labeled ImageFolder of 60 real handwritten digits not in `digit_images`."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("val")
    digits = load_digits()
    for i in range(1000, 1060):
        label_dir = folder / str(digits.target[i])
        label_dir.mkdir(exist_ok=True)
        pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(label_dir / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def script_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TorchScript teacher with a sidecar (random weights are enough to exercise the machinery)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_torchscript(tiny_classifier(), path)
    write_sidecar(path)
    return path


_CACHES = ("__pycache__/", ".pytest_cache/", ".ruff_cache/", ".egg-info/")


def _untracked(root: Path) -> set[str] | None:
    """Untracked and ignored files and folders in the repository, caches aside (an ignored folder such as runs/ is
    one entry, so this stays cheap); None outside a git checkout: nothing to compare."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--ignored=matching"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    entries = {line[3:] for line in done.stdout.splitlines() if line.startswith(("??", "!!"))}
    return {entry for entry in entries if not any(cache in entry for cache in _CACHES)}


@pytest.fixture(scope="session", autouse=True)
def tests_write_only_to_temporary_folders() -> object:
    """The suite must leave the repository as it found it: a command run without -o/--out writes runs/ into the
    working directory, which is the checkout. Checked once per session (one `git status` at each end)."""
    root = Path(__file__).resolve().parents[1]
    before = _untracked(root)
    yield
    after = _untracked(root)
    if before is not None and after is not None and after - before:
        pytest.fail(f"the tests left files in the repository: {', '.join(sorted(after - before)[:5])}", False)
