"""Which ONNX and which precision switches a TensorRT version needs (8.5 / 10.x / 11.x), in one place.

TensorRT 8.5 (JetPack 5) and 10.x (JetPack 6, NGC) are weakly typed: FP16/INT8 are builder flags on the FP32 ONNX
(INT8 from a calibration cache or from a Q/DQ ONNX). TensorRT 11 removed those flags, the INT8 calibrators and
trtexec's --fp16/--int8/--calib: every network is strongly typed, so the precision is in the ONNX itself, FP16 from an
FP16 ONNX and INT8 from the Q/DQ ONNX. build_engine.sh makes the same choice in bash from trtexec's banner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from eikd_edge.errors import EikdError
from eikd_edge.formats import FP16_ONNX, TRT_QDQ_ONNX
from eikd_edge.trt_engine import version_from_number

SUPPORTED = "TensorRT 8.5 to 11.x"
_BANNER = re.compile(r"TensorRT v(\d+)")


def banner_version(text: str) -> str | None:
    """'&&&& RUNNING TensorRT.trtexec [TensorRT v100300] ...' -> '10.3.0'."""
    match = _BANNER.search(text)
    return version_from_number(int(match.group(1))) if match else None


def major_minor(version: str) -> tuple[int, int]:
    try:
        major, minor = (int(p) for p in str(version).split(".")[:2])
    except ValueError:
        raise EikdError(f"cannot read the TensorRT version {version!r}") from None
    return major, minor


def check_supported(version: str) -> None:
    if not (8, 5) <= major_minor(version) < (12, 0):
        raise EikdError(f"TensorRT {version} is not supported; eikd-edge builds engines with {SUPPORTED}")


def strongly_typed(version: str) -> bool:
    return major_minor(version)[0] >= 11


@dataclass(frozen=True)
class BuildPath:
    """The ONNX file to parse and whether the FP16/INT8 builder flags are set (weakly typed TensorRT only)."""

    onnx: str
    fp16_flag: bool
    int8_flag: bool
    strongly_typed: bool
    calibrate: bool = False


def build_path(version: str, precision: str, calibration_cache: bool) -> BuildPath:
    """The path for `precision` on TensorRT `version`; `calibration_cache`: a cache made for this TensorRT + GPU."""
    check_supported(version)
    if strongly_typed(version):
        onnx = {"fp32": "student.onnx", "fp16": FP16_ONNX, "int8": TRT_QDQ_ONNX}[precision]
        return BuildPath(onnx, False, False, True)
    if precision == "fp32":
        return BuildPath("student.onnx", False, False, False)
    if precision == "fp16":
        return BuildPath("student.onnx", True, False, False)
    if calibration_cache:  # implicit quantization from the entropy calibrator's cache
        return BuildPath("student.onnx", True, True, False, calibrate=True)
    return BuildPath(TRT_QDQ_ONNX, True, True, False)  # explicit quantization: scales from the Q/DQ nodes
