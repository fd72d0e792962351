"""What one export call works with: the request, the outcome of each artifact, and the context every builder shares
(the student, the target, the parity reference, and the field images decoded once for every INT8 path). Kept apart
from pipeline.py so the builders (builders.py, on_device.py) can take it without importing the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eikd_edge.checkpoint import StudentCheckpoint
from eikd_edge.data import normalize
from eikd_edge.export.fieldset import folder_images, run_field_images
from eikd_edge.export.int8_candidates import run_logits
from eikd_edge.export.parity import DEFAULT_GATE, Reference
from eikd_edge.export.targets import DEFAULT_TARGET, Target
from eikd_edge.formats import get_format
from eikd_edge.ort_session import session
from eikd_edge.run import RunPaths
from eikd_edge.status import ArtifactStatus


@dataclass(frozen=True)
class ExportRequest:
    """What `export_run` builds; the FP32 ONNX model is built anyway when it is missing or from another student."""

    onnx: bool = False
    int8: bool = False
    trt_precisions: tuple[str, ...] = ()
    target: str = DEFAULT_TARGET
    opset: int | None = None
    exporter: str = "auto"
    gate: float = DEFAULT_GATE
    calib_images: int = 512
    threads: int = 0
    latency_budget_s: float = 1.0
    images: Path | None = None  # a folder of field images, when the run's pool folder is not at hand
    qad: str = "auto"  # quantization-aware distillation: auto (when post-training INT8 fails) | always | never
    trust_pickle: bool = False  # from the command line only: may the teacher's file be unpickled


@dataclass(frozen=True)
class Outcome:
    name: str
    status: ArtifactStatus  # ok | failed_gate | failed | on_device
    reason: str | None
    entry: dict[str, Any]


@dataclass
class ExportContext:
    run: RunPaths
    ckpt: StudentCheckpoint
    target: Target
    request: ExportRequest
    ref: Reference
    _calib: np.ndarray | None = None
    _evaluation: np.ndarray | None = None
    _spare: np.ndarray | tuple[()] | None = None  # () once decoded and found empty
    _fp32_reference: np.ndarray | None = None
    gated: list[Outcome] = field(default_factory=list)  # on-device artifacts refused before any script was written

    @property
    def chw(self) -> tuple[int, int, int]:
        return (3, *self.ckpt.spec.input_size)

    def calibration(self) -> np.ndarray:
        """Normalised, class-stratified selected field images (decoded once, shared by every INT8 path)."""
        if self._calib is None:
            limit, spec = self.request.calib_images, self.ckpt.spec
            if self.request.images is not None:
                images = folder_images(self.request.images, spec, limit)
            else:
                images = run_field_images(self.run, spec, "calibration", limit)
            self._calib = normalize(images.images, spec).numpy()
        return self._calib

    def fp32_reference(self) -> np.ndarray:
        """student.onnx's logits on the graded images in ONNX Runtime: what every INT8 model is graded against
        (computed once for ORT's INT8 and TensorRT's Q/DQ model)."""
        if self._fp32_reference is None:
            fp32 = get_format("onnx").path(self.run.root)
            self._fp32_reference = run_logits(session(fp32, self.request.threads), self.evaluation())
        return self._fp32_reference

    def evaluation(self) -> np.ndarray:
        """The graded parity images, normalised once for every INT8 path that grades itself on them."""
        if self._evaluation is None:
            self._evaluation = normalize(self.ref.images.images, self.ckpt.spec).numpy()
        return self._evaluation
