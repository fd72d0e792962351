"""The formats table (Ultralytics-style): one row per artifact drives export, validate and bench alike.

One row gives the artifact's name (export.json's key) <-> its backend (a key of eikd_edge.backends.BACKENDS, which
loads it) <-> its bench name (`eikd-edge bench --backends`) <-> the export flag that builds it. Light (no torch):
`--help` reads the bench names from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eikd_edge.errors import EikdError
from eikd_edge.run import NAMES, RunPaths


@dataclass(frozen=True)
class Format:
    """An artifact kind: its export.json key, file (relative to RUN/export, or RUN for the student), how it runs."""

    name: str
    file: str
    precision: str  # fp32 | fp16 | int8
    backend: str  # eikd_edge.backends.BACKENDS key: torch | onnxruntime | tensorrt
    bench: str  # its name in `eikd-edge bench --backends` and bench.json: torch | ort | ort-int8 | trt
    export_flag: str = ""  # the `eikd-edge export RUN` flag that builds it ("" for the student, trained by distill)
    exported: bool = True  # False for the PyTorch student, which is the reference, not an export

    def path(self, run_root: Path) -> Path:
        return RunPaths(run_root).export_dir / self.file if self.exported else run_root / self.file


FORMATS: tuple[Format, ...] = (
    Format("pytorch", NAMES.student.name, "fp32", "torch", "torch", exported=False),
    Format("onnx", "student.onnx", "fp32", "onnxruntime", "ort", "--onnx"),
    Format("onnx-int8", "student.int8.onnx", "int8", "onnxruntime", "ort-int8", "--int8"),
    Format("trt-fp32", "student.engine", "fp32", "tensorrt", "trt", "--trt"),
    Format("trt-fp16", "student.fp16.engine", "fp16", "tensorrt", "trt", "--trt"),
    Format("trt-int8", "student.int8.engine", "int8", "tensorrt", "trt", "--trt"),
)
# `eikd-edge bench --backends` names, in table order, and the export flag that makes each one's artifacts.
BENCH_NAMES: tuple[str, ...] = tuple(dict.fromkeys(f.bench for f in FORMATS))
EXPORT_FLAGS: dict[str, str] = {f.bench: f.export_flag for f in FORMATS if f.export_flag}

# Auxiliary files (not artifacts of their own) that export writes beside the artifacts.
TRT_QDQ_ONNX = "student.int8.trt.onnx"  # symmetric S8 QDQ model: TensorRT explicit quantization source
FP16_ONNX = "student.fp16.trt.onnx"  # weights and activations in FP16: TensorRT 11's (strongly typed) FP16 source
CALIBRATION_CACHE = "calibration.cache"
TIMING_CACHE = "timing.cache"
BUILD_SCRIPT = "build_engine.sh"
DEVICE_SCRIPT = "eikd_device.py"  # on-device helper (package data: resources/device)
PARITY_JSON, PARITY_IMAGES, PARITY_REFERENCE = "parity.json", "parity.images.npy", "parity.reference.npy"
DEVICE_RESULT = "device-result.json"
# Files that belong to one TensorRT target: removed when the export folder is re-exported for another target.
TARGET_FILES = (
    BUILD_SCRIPT,
    DEVICE_SCRIPT,
    TRT_QDQ_ONNX,
    FP16_ONNX,
    CALIBRATION_CACHE,
    CALIBRATION_CACHE + ".key",
    TIMING_CACHE,
    TIMING_CACHE + ".key",
    PARITY_JSON,
    PARITY_IMAGES,
    PARITY_REFERENCE,
    DEVICE_RESULT,
)


def get_format(name: str) -> Format:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise EikdError(f"unknown artifact {name!r}; known: {', '.join(f.name for f in FORMATS)}")


def trt_format(precision: str) -> Format:
    return get_format(f"trt-{precision}")


def build_record_path(engine: Path) -> Path:
    """student.fp16.engine -> student.fp16.engine.json (the record that ties an engine to its GPU + TensorRT)."""
    return engine.with_name(engine.name + ".json")
