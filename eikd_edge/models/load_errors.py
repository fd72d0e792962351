"""How a model file that fails to load, or a model that fails its dry forward, is said in one line, apart from the
loading itself (teacher.py): the line of an exception that names the problem, a hint for files from other
frameworks, and torch.export's own logging kept off the terminal."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from eikd_edge.errors import EikdError

FOREIGN = {
    ".onnx": "ONNX",
    ".engine": "TensorRT",
    ".plan": "TensorRT",
    ".tflite": "TFLite",
    ".pb": "TensorFlow",
    ".h5": "Keras",
    ".keras": "Keras",
    ".safetensors": "safetensors",
}


def foreign_hint(path: Path) -> str:
    kind = FOREIGN.get(path.suffix.lower())
    return f"; it looks like {kind}, not PyTorch: give the PyTorch model it came from" if kind else ""


def guard(load: Any, path: Path, what: str) -> Any:
    try:
        return load()
    except Exception as exc:
        raise EikdError(
            f"{path.name} looks like {what} but failed to load: {type(exc).__name__}: {error_line(exc)[:200]}"
        ) from None


def quiet(load: Any, *args: Any) -> Any:
    """torch.export.load logs its failures with full tracebacks to stderr; the error line says it instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return load(*args)
    finally:
        logging.disable(previous)


def error_line(exc: Exception) -> str:
    """The line of an exception that says what went wrong (TorchScript puts it last, after its own traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1]
    return lines[0]


def one_line(text: str) -> str:
    parts = [line.strip() for line in text.splitlines() if line.strip() and set(line.strip()) != {"^"}]
    return " ".join(parts)


def describe(out: Any) -> str:
    return str(tuple(out.shape)) if isinstance(out, torch.Tensor) else type(out).__name__
