"""TensorRT engines (TensorRT 8.5, 10.x and 11.x): build with a batch profile, FP32/FP16/INT8, timing cache, record.

An engine only runs on the GPU model and TensorRT version that built it, so every engine has a JSON build record
(TensorRT version of the library actually loaded, GPU, compute capability, SM count, board, ONNX sha256, precision,
shapes) and loading refuses a mismatch. The precision path follows the installed version (eikd_edge.export.trt_paths):
builder flags on 8.5/10, a strongly typed network from an FP16 or Q/DQ ONNX on 11. Timing and calibration caches are
keyed by TensorRT version + device and a cache made elsewhere is refused. tensorrt is imported lazily: without it (or
without the target's device) export writes build_engine.sh instead, to run with trtexec on the target itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from eikd_edge import __version__
from eikd_edge.atomic import write_atomic, write_json_atomic
from eikd_edge.device_identity import identity
from eikd_edge.errors import EikdError
from eikd_edge.export import device as dev
from eikd_edge.export.onnx import INPUT_NAME
from eikd_edge.export.targets import Target
from eikd_edge.export.trt_paths import BuildPath, build_path, check_supported, major_minor, strongly_typed
from eikd_edge.formats import CALIBRATION_CACHE, TIMING_CACHE, build_record_path
from eikd_edge.models.teacher import file_sha256
from eikd_edge.trt_engine import current_device, import_tensorrt, library_version, unavailable_reason

RECORD_FORMAT = "eikd-edge/trt-build-record"


def strongly_typed_here() -> bool:
    """Whether the installed TensorRT is 11 or newer (strongly typed networks only)."""
    return strongly_typed(library_version(import_tensorrt())[0])


def build_blocker(target: Target) -> str | None:
    """Why engines for `target` cannot be built in this process (None: build here): no TensorRT, no GPU, or a GPU
    that is not the target's device (an engine built here would only run here, whatever its record says)."""
    reason = unavailable_reason()
    if reason is None:
        reason = dev.target_mismatch(target, identity())
    return reason


def engine_shapes(target: Target, precision: str, chw: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """min/opt/max input shapes; static at the opt batch on a DLA (DLA has no dynamic dimensions)."""
    if target.dla_core is not None and precision != "fp32":
        return {key: (target.batch.opt, *chw) for key in ("min", "opt", "max")}
    batches = {"min": target.batch.min, "opt": target.batch.opt, "max": target.batch.max}
    return {key: (n, *chw) for key, n in batches.items()}


def build_engine(
    onnx_dir: Path,
    engine_path: Path,
    precision: str,
    target: Target,
    chw: tuple[int, int, int],
    calib_images: np.ndarray | None = None,
) -> dict[str, Any]:
    """ONNX -> serialized engine + build record, both written atomically. The ONNX file (FP32, FP16 or Q/DQ in
    onnx_dir) and the precision switches follow the installed TensorRT (see trt_paths)."""
    trt = import_tensorrt()
    start = time.perf_counter()
    device = current_device()
    version = device["tensorrt_version"]
    check_supported(version)
    key = dev.cache_key(version, device)
    notes: list[str] = []
    calib_cache = engine_path.parent / CALIBRATION_CACHE
    calib_ok, why = dev.usable_cache(calib_cache, key)
    notes += [why] if why else []
    path = build_path(version, precision, calib_ok or calib_images is not None)
    onnx_path = onnx_dir / path.onnx
    if not onnx_path.is_file():
        raise EikdError(f"{onnx_path.name} is missing: TensorRT {version} builds {precision} from it")
    builder, network, _parser = _parse(trt, onnx_path, version, path)  # all three live until the build is over
    config = builder.create_builder_config()
    shapes = _configure(trt, builder, config, target, precision, chw, path)
    calibrator = None
    if path.calibrate:
        calibrator = _set_calibrator(trt, builder, config, target, chw, calib_images, calib_cache, calib_ok, key)
    dla = _set_dla(trt, builder, config, precision, target)
    timing_path = engine_path.parent / TIMING_CACHE
    timing_ok, why = dev.usable_cache(timing_path, key)
    notes += [why] if why else []
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_ok else b"")
    config.set_timing_cache(timing, False)
    serialized = builder.build_serialized_network(network, config)
    del calibrator  # kept alive until the build (and its calibration) is over
    if serialized is None:
        raise EikdError(f"TensorRT failed to build the {precision} engine (see the TensorRT log above)")
    write_atomic(engine_path, lambda tmp: tmp.write_bytes(bytes(serialized)))
    write_atomic(timing_path, lambda tmp: tmp.write_bytes(bytes(config.get_timing_cache().serialize())))
    dev.write_cache_key(timing_path, key)
    record = _record(device, precision, path, shapes, target, dla, onnx_path, notes, start)
    write_json_atomic(build_record_path(engine_path), record)
    return record


def _parse(trt: Any, onnx_path: Path, version: str, path: BuildPath) -> tuple[Any, Any, Any]:
    """Builder, network and the ONNX parser that filled it (returned so the caller keeps it alive)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, version, path.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EikdError(f"TensorRT cannot parse {onnx_path.name}: {errors or 'unknown error'}")
    return builder, network, parser


def _configure(
    trt: Any, builder: Any, config: Any, target: Target, precision: str, chw: tuple[int, int, int], path: BuildPath
) -> dict[str, tuple[int, ...]]:
    """Workspace, the optimization profile from the target's batch sizes and the precision flags; the shapes."""
    if target.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_mib << 20)
    shapes = engine_shapes(target, precision, chw)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if path.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16, not FP32
    if path.int8_flag:
        config.set_flag(trt.BuilderFlag.INT8)
    return shapes


def _record(
    device: dict[str, Any],
    precision: str,
    path: BuildPath,
    shapes: dict[str, tuple[int, ...]],
    target: Target,
    dla: int | None,
    onnx_path: Path,
    notes: list[str],
    start: float,
) -> dict[str, Any]:
    """The build record written beside the engine (ENGINE.json)."""
    return {
        "format": RECORD_FORMAT,
        **device,
        "precision": precision,
        "strongly_typed": path.strongly_typed,
        "input_name": INPUT_NAME,
        "min_shape": list(shapes["min"]),
        "opt_shape": list(shapes["opt"]),
        "max_shape": list(shapes["max"]),
        "target": target.name,
        "dla_core": dla,
        "onnx": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
        "calibration": "cache" if path.calibrate else ("q/dq" if precision == "int8" else None),
        "cache_notes": notes,
        "built_with": f"eikd-edge {__version__}",
        "build_s": round(time.perf_counter() - start, 3),
    }


def _network_flags(trt: Any, version: str, strongly: bool) -> int:
    """EXPLICIT_BATCH before 10 (the default, and deprecated, since 10); STRONGLY_TYPED on 11 (always on there)."""
    flags = trt.NetworkDefinitionCreationFlag
    if strongly:
        return 1 << int(flags.STRONGLY_TYPED)
    return 1 << int(flags.EXPLICIT_BATCH) if major_minor(version)[0] < 10 else 0


def _set_calibrator(
    trt: Any,
    builder: Any,
    config: Any,
    target: Target,
    chw: tuple[int, int, int],
    calib_images: np.ndarray | None,
    cache: Path,
    cache_ok: bool,
    key: str,
) -> Any:
    """IInt8EntropyCalibrator2 (8.5/10 only) on field images; reads the cache only when it was made here."""
    if not cache_ok and (calib_images is None or len(calib_images) == 0):
        raise EikdError("INT8 engine needs calibration images from the run's selection")
    images = calib_images if calib_images is not None else np.zeros((1, *chw), np.float32)
    batch = min(target.batch.opt, len(images))
    calibrator = _make_calibrator(trt, images, cache, batch, cache_ok, key)
    calib_profile = builder.create_optimization_profile()
    calib_profile.set_shape(INPUT_NAME, (batch, *chw), (batch, *chw), (batch, *chw))
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


def _make_calibrator(trt: Any, images: np.ndarray, cache: Path, batch: int, cache_ok: bool, key: str) -> Any:
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
            return cache.read_bytes() if cache_ok else None  # a cache from another TensorRT or GPU is refused

        def write_calibration_cache(self, data: Any) -> None:
            write_atomic(cache, lambda tmp: tmp.write_bytes(bytes(data)))
            dev.write_cache_key(cache, key)

    return _EntropyCalibrator()
