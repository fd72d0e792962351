"""Loading a TensorRT engine where it will run: the TensorRT import, this machine's TensorRT version and GPU
identity, and the check of an engine's build record against them. Core, so the runtime's TensorRT predictor loads
engines without importing the export stage that builds them."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from eikd_edge.device_identity import identity
from eikd_edge.errors import EikdError
from eikd_edge.formats import build_record_path
from eikd_edge.run import read_json

INSTALL_HINT = "pip install 'eikd-edge[trt]' (or use the TensorRT that ships with JetPack)"


def version_from_number(number: int) -> str:
    """NV_TENSORRT_VERSION: major*1000+minor*100+patch up to 9.x (8503), major*10000+minor*100+patch since 10."""
    if number >= 100000:
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return f"{number // 1000}.{number // 100 % 10}.{number % 100}"


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise EikdError(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return tensorrt


def unavailable_reason() -> str | None:
    """Why engines cannot be built or run in this process, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed here"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible here"
    return None


def library_version(trt: Any) -> tuple[str, str]:
    """(version, source): libnvinfer's own getInferLibVersion() when it can be read, else the Python module's."""
    major = str(trt.__version__).split(".")[0]
    try:
        number = int(ctypes.CDLL(f"libnvinfer.so.{major}").getInferLibVersion())
    except (OSError, AttributeError, ValueError):
        return str(trt.__version__), "tensorrt module"
    return version_from_number(number), "libnvinfer"


def current_device() -> dict[str, Any]:
    trt = import_tensorrt()
    info = identity()
    if info is None:
        raise EikdError("no CUDA GPU is visible: TensorRT engines need one")
    version, source = library_version(trt)
    return {"tensorrt_version": version, "tensorrt_version_source": source, **info}


def check_build_record(record: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse an engine built for another TensorRT version, GPU model or compute capability (pure, testable)."""
    missing = [k for k in ("tensorrt_version", "gpu_name", "compute_capability") if not record.get(k)]
    if missing:
        raise EikdError(f"engine build record lacks {', '.join(missing)}; rebuild the engine on this device")
    problems = []
    if _version_key(record["tensorrt_version"]) != _version_key(current.get("tensorrt_version", "")):
        problems.append(f"TensorRT {record['tensorrt_version']} (this machine: {current.get('tensorrt_version')})")
    if str(record["compute_capability"]) != str(current.get("compute_capability")):
        problems.append(
            f"compute capability {record['compute_capability']} (here: {current.get('compute_capability')})"
        )
    if _gpu_key(record["gpu_name"]) != _gpu_key(str(current.get("gpu_name", ""))):
        problems.append(f"GPU {record['gpu_name']} (here: {current.get('gpu_name')})")
    for key, what in (("sm_count", "SM count"), ("board", "board")):
        if record.get(key) is not None and current.get(key) is not None and record[key] != current[key]:
            problems.append(f"{what} {record[key]} (here: {current[key]})")
    if problems:
        raise EikdError(
            "engine was built for " + "; ".join(problems) + ". Engines are tied to GPU + TensorRT version: "
            "rebuild it here with build_engine.sh or `eikd-edge export RUN --trt`"
        )


def _version_key(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:3])


def _gpu_key(name: str) -> str:
    return " ".join(name.lower().replace("nvidia", "").split())


def load_engine(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(runtime, engine, record) after checking the build record against this device and TensorRT."""
    if not path.is_file():
        raise EikdError(f"engine not found: {path}")
    record_path = build_record_path(path)
    if not record_path.is_file():
        raise EikdError(f"{path.name} has no build record {record_path.name}; rebuild it with build_engine.sh")
    record = read_json(record_path, "engine build record")
    trt = import_tensorrt()
    check_build_record(record, current_device())
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if record.get("dla_core") is not None:
        runtime.DLA_core = int(record["dla_core"])  # chosen at deserialization: the plan does not store the core
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EikdError(f"TensorRT could not deserialize {path.name}; rebuild it on this device")
    return runtime, engine, record
