"""The backends registry: one entry per runtime that runs an artifact of the formats table.

A Backend says whether it can run here (the reason it cannot, or None), how to load an artifact file into a
predictor (eikd_edge.runtime's classes, imported on use so that this module stays light), and how its artifacts
behave: an optional extra is skipped where it is missing, a device-bound artifact (a TensorRT engine) belongs to the
GPU and runtime version that built it. Export, validate and bench ask this registry instead of comparing names; the
formats table (eikd_edge.formats) ties each artifact to its backend, its bench name and its export flag.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from eikd_edge.errors import EikdError
from eikd_edge.formats import FORMATS, Format
from eikd_edge.trt_engine import unavailable_reason

if TYPE_CHECKING:
    import numpy as np

    from eikd_edge.models.spec import InputSpec


class Predictor(Protocol):
    """What every backend's predictor offers: uint8 NCHW images in, float32 logits out (eikd_edge.runtime)."""

    name: str

    def predict_logits(self, images: Any) -> np.ndarray: ...


class Load(Protocol):
    def __call__(self, path: Path, spec: InputSpec, *, name: str, threads: int, device: str) -> Predictor: ...


@dataclass(frozen=True)
class Backend:
    """A runtime that runs artifacts: its formats-table name, availability here and predictor factory."""

    name: str  # Format.backend: torch | onnxruntime | tensorrt
    unavailable: Callable[[], str | None]  # why it cannot run in this process, or None when it can
    load: Load  # an artifact file -> its predictor
    # An extra, not a dependency: where it is unavailable, its artifacts are skipped rather than failed.
    optional: bool = False
    # Built for one GPU + runtime version: a build record beside each artifact, the artifacts belong to one export
    # target, and a refusal to load one is a failure only on the device it was built for.
    device_bound: bool = False

    def predictor(self, fmt: Format, run_root: Path, spec: InputSpec, threads: int = 0, device: str = "auto") -> Any:
        """The predictor for one row of the formats table in the run folder `run_root`."""
        return self.load(fmt.path(run_root), spec, name=fmt.name, threads=threads, device=device)


def _always_here() -> str | None:
    return None  # torch is what eikd-edge itself runs on


def _onnxruntime_missing() -> str | None:
    return None if importlib.util.find_spec("onnxruntime") is not None else "ONNX Runtime is not installed here"


def _load_torch(path: Path, spec: InputSpec, *, name: str, threads: int, device: str) -> Predictor:
    from eikd_edge.runtime import TorchPredictor

    return TorchPredictor.from_checkpoint(path)  # the reference student, on the CPU, with its checkpoint's own spec


def _load_onnxruntime(path: Path, spec: InputSpec, *, name: str, threads: int, device: str) -> Predictor:
    from eikd_edge.runtime import OnnxPredictor

    return OnnxPredictor(path, spec, device=device, threads=threads, name=name)


def _load_tensorrt(path: Path, spec: InputSpec, *, name: str, threads: int, device: str) -> Predictor:
    from eikd_edge.runtime import TensorRTPredictor

    return TensorRTPredictor(path, spec, name=name)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", _always_here, _load_torch),
        Backend("onnxruntime", _onnxruntime_missing, _load_onnxruntime),
        Backend("tensorrt", unavailable_reason, _load_tensorrt, optional=True, device_bound=True),
    )
}


def backend_for(fmt: Format) -> Backend:
    """The backend that runs this row of the formats table."""
    try:
        return BACKENDS[fmt.backend]
    except KeyError:
        raise EikdError(f"no predictor for backend {fmt.backend!r}") from None


def device_bound_formats() -> tuple[Format, ...]:
    """The rows whose artifacts are tied to one device (TensorRT engines): build records, one target's files."""
    return tuple(f for f in FORMATS if backend_for(f).device_bound)
