"""Contract test of the Dockerfile, read as text (Docker is not available to the test suite): it keeps NVIDIA's
entrypoint, cannot replace the image's torch/TensorRT, and smoke-tests an export during the build. It proves these
properties of the file, not that the image builds."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            rows.append((keyword.upper(), args.strip()))
    return rows


def _run_commands() -> list[str]:
    return [cmd.strip() for kw, args in _instructions() if kw == "RUN" for cmd in args.split("&&")]


def test_keeps_nvidia_entrypoint() -> None:
    keywords = [kw for kw, _ in _instructions()]
    assert keywords[0] == "FROM" and "nvcr.io/nvidia/" in _instructions()[0][1]
    assert "ENTRYPOINT" not in keywords  # NVIDIA's entrypoint sets up CUDA forward compatibility, then runs CMD


def test_install_is_constrained_to_the_image_packages() -> None:
    commands = _run_commands()
    freeze = next(c for c in commands if c.startswith("pip list --format=freeze") and "image-constraints" in c)
    constraints = freeze.rsplit(">", 1)[1].strip()
    installs = [c for c in commands if re.search(r"\bpip install\b", c)]
    assert installs, "the Dockerfile installs eikd-edge with pip"
    for install in installs:
        words = shlex.split(install)
        constrained = f"PIP_CONSTRAINT={constraints}" in words or any(
            w in ("-c", "--constraint") and words[i + 1] == constraints for i, w in enumerate(words[:-1])
        )
        assert constrained, f"unconstrained install: {install}"
        assert not any("[trt]" in w or "tensorrt" in w.lower() or w.startswith("torch") for w in words), install
        assert commands.index(install) > commands.index(freeze)  # constraints exist before the install
    assert any("diff" in c and "torch|tensorrt" in c for c in commands)  # the build proves they are unchanged


def test_build_smoke_tests_an_export_of_a_real_run() -> None:
    commands = _run_commands()
    install = next(i for i, c in enumerate(commands) if re.search(r"\bpip install\b", c))
    exports = [i for i, c in enumerate(commands) if c.startswith("eikd-edge export ")]
    assert exports and exports[0] > install
    export = shlex.split(commands[exports[0]])
    assert "--onnx" in export and "--int8" in export
    run = export[2]
    assert any(c.startswith("eikd-edge quickstart") and f"--out {run}" in c for c in commands[install : exports[0]])
    assert not any(c.startswith("cd /opt/eikd-edge") for c in commands)  # exported by the installed package
