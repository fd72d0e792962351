"""TensorRT engines (TensorRT 8.6 and 10.x): build with a batch profile, FP32/FP16/INT8, timing cache, build record.

An engine only runs on the GPU model and TensorRT version that built it, so every engine has a JSON build record
and loading refuses a mismatch. tensorrt is imported lazily: without it (or without a GPU) export writes
build_engine.sh instead, to run with trtexec on the target itself.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import Any

import numpy as np

from eikd_edge import __version__
from eikd_edge.atomic import write_atomic, write_json_atomic
from eikd_edge.errors import EikdError
from eikd_edge.export.formats import CALIBRATION_CACHE, TIMING_CACHE, build_record_path
from eikd_edge.export.onnx import INPUT_NAME
from eikd_edge.export.targets import Target
from eikd_edge.run import read_json

RECORD_FORMAT = "eikd-edge/trt-build-record"
INSTALL_HINT = "pip install 'eikd-edge[trt]' (or use the TensorRT that ships with JetPack)"


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


def cuda_device_info(index: int = 0) -> dict[str, str] | None:
    """GPU name, compute capability and CUDA driver version from libcuda (same source as build_engine.sh)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, major, minor, version = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
        return None
    cuda.cuDeviceGetName(name, 256, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
    cuda.cuDriverGetVersion(ctypes.byref(version))
    return {
        "gpu_name": name.value.decode(errors="replace"),
        "compute_capability": f"{major.value}.{minor.value}",
        "cuda_version": f"{version.value // 1000}.{version.value % 1000 // 10}",
    }


def current_device() -> dict[str, str]:
    trt = import_tensorrt()
    info = cuda_device_info()
    if info is None:
        raise EikdError("no CUDA GPU is visible: TensorRT engines need one")
    return {"tensorrt_version": trt.__version__, **info}


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
    if problems:
        raise EikdError(
            "engine was built for " + "; ".join(problems) + ". Engines are tied to GPU + TensorRT version: "
            "rebuild it here with build_engine.sh or `eikd-edge export RUN --trt`"
        )


def _version_key(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:3])


def _gpu_key(name: str) -> str:
    return " ".join(name.lower().replace("nvidia", "").split())


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    target: Target,
    chw: tuple[int, int, int],
    calib_images: np.ndarray | None = None,
) -> dict[str, Any]:
    """ONNX -> serialized engine + build record, both written atomically. INT8 calibrates on field images."""
    trt = import_tensorrt()
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    network = builder.create_network(0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EikdError(f"TensorRT cannot parse {onnx_path.name}: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    if target.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_mib << 20)
    batches = {"min": target.batch.min, "opt": target.batch.opt, "max": target.batch.max}
    shapes = {key: (n, *chw) for key, n in batches.items()}
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    calibrator = _set_precision(trt, builder, config, precision, target, chw, calib_images, engine_path, onnx_path)
    dla = _set_dla(trt, builder, config, precision, target)
    timing_path = engine_path.parent / TIMING_CACHE
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, False)
    serialized = builder.build_serialized_network(network, config)
    del calibrator  # kept alive until the build (and its calibration) is over
    if serialized is None:
        raise EikdError(f"TensorRT failed to build the {precision} engine (see the TensorRT log above)")
    write_atomic(engine_path, lambda tmp: tmp.write_bytes(bytes(serialized)))
    write_atomic(timing_path, lambda tmp: tmp.write_bytes(bytes(config.get_timing_cache().serialize())))
    record = {
        "format": RECORD_FORMAT,
        **current_device(),
        "precision": precision,
        "input_name": INPUT_NAME,
        "min_shape": list(shapes["min"]),
        "opt_shape": list(shapes["opt"]),
        "max_shape": list(shapes["max"]),
        "target": target.name,
        "dla_core": dla,
        "onnx": onnx_path.name,
        "built_with": f"eikd-edge {__version__}",
        "build_s": round(time.perf_counter() - start, 3),
    }
    write_json_atomic(build_record_path(engine_path), record)
    return record


def _set_precision(
    trt: Any,
    builder: Any,
    config: Any,
    precision: str,
    target: Target,
    chw: tuple[int, int, int],
    calib_images: np.ndarray | None,
    engine_path: Path,
    onnx_path: Path,
) -> Any:
    """FP16 for fp16/int8 (INT8 layers fall back to FP16, not FP32); INT8 with the entropy calibrator."""
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision != "int8":
        return None
    if calib_images is None or len(calib_images) == 0:
        raise EikdError("INT8 engine needs calibration images from the run's selection")
    cache = engine_path.parent / CALIBRATION_CACHE
    if cache.is_file() and cache.stat().st_mtime < onnx_path.stat().st_mtime:
        cache.unlink()  # calibrated for an older ONNX: recompute
    batch = min(target.batch.opt, len(calib_images))
    calibrator = _make_calibrator(trt, calib_images, cache, batch)
    calib_profile = builder.create_optimization_profile()
    calib_profile.set_shape(INPUT_NAME, (batch, *chw), (batch, *chw), (batch, *chw))
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(calib_profile)
    return calibrator


def _set_dla(trt: Any, builder: Any, config: Any, precision: str, target: Target) -> int | None:
    """The target's DLA core for fp16/int8 engines when this device has it (GPU fallback for unsupported layers)."""
    dla = target.dla_core
    if dla is None or precision == "fp32" or builder.num_DLA_cores <= dla:
        return None
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return dla


def _make_calibrator(trt: Any, images: np.ndarray, cache: Path, batch: int) -> Any:
    """IInt8EntropyCalibrator2 fed from a torch CUDA buffer; the cache lands in RUN/export/calibration.cache."""
    import torch

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            usable = len(images) // batch * batch
            self.batches = [images[i : i + batch] for i in range(0, usable, batch)]
            self.index = 0
            self.buffer = torch.empty((batch, *images.shape[1:]), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(self.batches):
                return None
            self.buffer.copy_(torch.from_numpy(np.ascontiguousarray(self.batches[self.index])))
            torch.cuda.synchronize()
            self.index += 1
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            write_atomic(cache, lambda tmp: tmp.write_bytes(bytes(data)))

    return _EntropyCalibrator()


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
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EikdError(f"TensorRT could not deserialize {path.name}; rebuild it on this device")
    return runtime, engine, record
