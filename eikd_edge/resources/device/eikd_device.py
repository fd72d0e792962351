#!/usr/bin/env python3
"""On-device helper for eikd-edge exports: device identity, engine build records, and engine validation.

Copied by `eikd-edge export` into RUN/export/ next to build_engine.sh, so the folder that goes to the device carries
everything it needs. It runs on the device itself with what JetPack 5/6 (and NVIDIA's TensorRT containers) ship:

  python3 eikd_device.py info                  # this device: GPU, compute capability, SM count, board (python3 only)
  python3 eikd_device.py cache-key VERSION     # the key that ties timing/calibration caches to TensorRT + device
  python3 eikd_device.py record ENGINE ...     # the build record of an engine built by trtexec (python3 only)
  python3 eikd_device.py validate [--out F]    # run every engine on the run's parity images (tensorrt + numpy)

GPU memory goes through the CUDA driver API (libcuda.so.1, present wherever TensorRT runs) via ctypes, so neither
pycuda nor cuda-python is needed (JetPack ships neither). Python 3.8 compatible (JetPack 5).
Exit codes of `validate`: 0 every engine passed, 2 an engine failed (refused record, no record, not deserializable,
or under the agreement gate), 1 a usage problem (missing parity files).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RECORD_FORMAT = "eikd-edge/trt-build-record"
RESULT_FORMAT = "eikd-edge/device-result"
PARITY_JSON = "parity.json"
PARITY_IMAGES = "parity.images.npy"
PARITY_REFERENCE = "parity.reference.npy"
ENGINES = {"student.engine": "trt-fp32", "student.fp16.engine": "trt-fp16", "student.int8.engine": "trt-int8"}
BOARD_MODEL = "/proc/device-tree/model"

# CUdevice_attribute values from cuda.h
_CC_MAJOR, _CC_MINOR, _SM_COUNT = 75, 76, 16


# ---------------------------------------------------------------- device identity (python3 only)


def board_model(path: str = BOARD_MODEL) -> str | None:
    """The board name on Jetson (e.g. 'NVIDIA Jetson Orin Nano Developer Kit'); None on a PC."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(256).decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None
    return text or None


def cuda_device(index: int = 0) -> dict[str, Any] | None:
    """GPU name, compute capability, SM count and CUDA driver version from libcuda; None without a CUDA GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, major, minor, sms, version = (ctypes.c_int() for _ in range(5))
    name = ctypes.create_string_buffer(256)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
        return None
    cuda.cuDeviceGetName(name, 256, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(sms), _SM_COUNT, device)
    cuda.cuDriverGetVersion(ctypes.byref(version))
    return {
        "gpu_name": name.value.decode(errors="replace"),
        "compute_capability": f"{major.value}.{minor.value}",
        "sm_count": sms.value,
        "cuda_version": f"{version.value // 1000}.{version.value % 1000 // 10}",
    }


def device_info() -> dict[str, Any]:
    """Every field present; GPU fields are None when no CUDA GPU is visible (such a record loads nowhere)."""
    info = cuda_device() or {"gpu_name": None, "compute_capability": None, "sm_count": None, "cuda_version": None}
    info["board"] = board_model()
    return info


def version3(version: str) -> str:
    return ".".join(str(version).split(".")[:3])


def cache_key(tensorrt_version: str, info: dict[str, Any]) -> str:
    """TensorRT version + GPU identity: a timing or calibration cache is only valid for the exact same key."""
    return "TensorRT {} | {} | sm_{} | {} SMs | {}".format(
        version3(tensorrt_version),
        info.get("gpu_name"),
        str(info.get("compute_capability")).replace(".", ""),
        info.get("sm_count"),
        info.get("board") or "no board",
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_record(args: argparse.Namespace) -> int:
    """The build record of an engine trtexec just built; the TensorRT version is trtexec's own (its banner)."""
    shape = lambda text: [int(v) for v in text.split("x")]  # noqa: E731
    info = device_info()
    record = {
        "format": RECORD_FORMAT,
        "tensorrt_version": args.trt_version,
        "tensorrt_version_source": "trtexec banner",
        **info,
        "precision": args.precision,
        "strongly_typed": args.strongly_typed == "yes",
        "input_name": "images",
        "min_shape": shape(args.low),
        "opt_shape": shape(args.opt),
        "max_shape": shape(args.high),
        "target": args.target,
        "dla_core": None if args.dla == "none" else int(args.dla),
        "onnx": args.onnx,
        "onnx_sha256": sha256(Path(args.onnx)),
        "built_with": "trtexec via build_engine.sh",
    }
    tmp = args.engine + ".json.tmp"
    with open(tmp, "w") as handle:
        json.dump(record, handle, indent=2)
    os.replace(tmp, args.engine + ".json")
    if info["gpu_name"] is None:
        print(f"warning: no CUDA GPU visible: {args.engine}.json names no device and will be refused", file=sys.stderr)
    print("wrote {}.json ({}, TensorRT {})".format(args.engine, info["gpu_name"], args.trt_version))
    return 0


# ---------------------------------------------------------------- checks shared with eikd-edge


def record_problems(record: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why an engine built for `record` must not run on `current` (empty when it may)."""
    missing = [k for k in ("tensorrt_version", "gpu_name", "compute_capability") if not record.get(k)]
    if missing:
        return ["build record lacks " + ", ".join(missing)]
    problems = []
    if version3(record["tensorrt_version"]) != version3(current.get("tensorrt_version") or ""):
        problems.append("TensorRT {} (here: {})".format(record["tensorrt_version"], current.get("tensorrt_version")))
    if str(record["compute_capability"]) != str(current.get("compute_capability")):
        problems.append(
            "compute capability {} (here: {})".format(record["compute_capability"], current.get("compute_capability"))
        )
    if _gpu_key(record["gpu_name"]) != _gpu_key(str(current.get("gpu_name") or "")):
        problems.append("GPU {} (here: {})".format(record["gpu_name"], current.get("gpu_name")))
    for key, what in (("sm_count", "SM count"), ("board", "board")):
        if record.get(key) is not None and current.get(key) is not None and record[key] != current[key]:
            problems.append(f"{what} {record[key]} (here: {current[key]})")
    return problems


def _gpu_key(name: str) -> str:
    return " ".join(name.lower().replace("nvidia", "").split())


def softmax(logits: Any) -> Any:
    import numpy as np

    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def parity_figures(logits: Any, reference: Any, gate: float) -> dict[str, Any]:
    """The same figures as eikd-edge's own parity: a NaN/Inf row never agrees."""
    import numpy as np

    finite = np.isfinite(logits).all(1) & np.isfinite(reference).all(1)
    agree = float(((logits.argmax(1) == reference.argmax(1)) & finite).mean())
    with np.errstate(invalid="ignore", over="ignore"):
        dlogit = np.abs(logits - reference)
        dprob = np.abs(softmax(logits) - softmax(reference))
    return {
        "agree_student": agree,
        "flip_rate": 1.0 - agree,
        "max_abs_dprob": float(dprob.max()) if np.isfinite(dprob).all() else None,
        "max_abs_dlogit": float(dlogit.max()) if np.isfinite(dlogit).all() else None,
        "n_images": len(logits),
        "non_finite": int((~finite).sum()),
        "gate": gate,
        "passed": agree >= gate,
    }


def latency_stats(times_s: list[float], batch: int) -> dict[str, Any]:
    import numpy as np

    ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "batch": batch,
        "iters": len(ms),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std()),
        "images_per_s": float(batch * 1000.0 / ms.mean()) if ms.mean() > 0 else None,
    }


def engine_result(
    name: str, engine: str, record: dict[str, Any] | None, status: str, reason: str | None, **extra: Any
) -> dict[str, Any]:
    kept = ("tensorrt_version", "precision", "target", "dla_core", "onnx_sha256", "min_shape", "max_shape")
    entry = {"name": name, "engine": engine, "status": status, "reason": reason}
    entry["record"] = {k: record.get(k) for k in kept} if isinstance(record, dict) else None
    entry.update(extra)
    return entry


# ---------------------------------------------------------------- running engines (tensorrt + numpy)


class _Cuda:
    """Just enough of the CUDA driver API: primary context, device buffers, synchronous copies, one stream."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
        self.lib.cuMemFree_v2.argtypes = [ctypes.c_uint64]
        self.lib.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
        self.lib.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
        self.lib.cuStreamSynchronize.argtypes = [ctypes.c_void_p]
        device, context, stream = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.lib.cuInit(0), "cuInit")
        self._check(self.lib.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
        self._check(self.lib.cuCtxSetCurrent(context), "cuCtxSetCurrent")
        self._check(self.lib.cuStreamCreate(ctypes.byref(stream), 0), "cuStreamCreate")
        self.stream = stream

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what} failed with CUDA error {code}")

    def alloc(self, nbytes: int) -> int:
        pointer = ctypes.c_uint64()
        self._check(self.lib.cuMemAlloc_v2(ctypes.byref(pointer), max(int(nbytes), 1)), "cuMemAlloc")
        return pointer.value

    def free(self, pointer: int) -> None:
        self.lib.cuMemFree_v2(pointer)

    def to_device(self, pointer: int, array: Any) -> None:
        self._check(self.lib.cuMemcpyHtoD_v2(pointer, array.ctypes.data, array.nbytes), "cuMemcpyHtoD")

    def to_host(self, array: Any, pointer: int) -> None:
        self._check(self.lib.cuMemcpyDtoH_v2(array.ctypes.data, pointer, array.nbytes), "cuMemcpyDtoH")

    def sync(self) -> None:
        self._check(self.lib.cuStreamSynchronize(self.stream), "cuStreamSynchronize")


class _Engine:
    """One deserialized engine with device buffers sized for its largest batch; synchronous host-to-host runs."""

    def __init__(self, trt: Any, cuda: _Cuda, engine: Any, record: dict[str, Any]) -> None:
        import numpy as np

        self.np, self.cuda, self.engine = np, cuda, engine
        self.context = engine.create_execution_context()
        self.input = str(record.get("input_name") or "images")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.output = next(n for n in names if n != self.input)
        self.in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input)))
        self.out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output)))
        self.min_batch, self.max_batch = int(record["min_shape"][0]), int(record["max_shape"][0])
        self.chw = tuple(int(v) for v in record["max_shape"][1:])
        self.d_in = cuda.alloc(self.max_batch * int(np.prod(self.chw)) * self.in_dtype.itemsize)
        self.context.set_input_shape(self.input, (self.max_batch, *self.chw))
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        self.d_out = cuda.alloc(int(np.prod(out_shape)) * self.out_dtype.itemsize)

    def run(self, batch: Any) -> Any:
        """float32 NCHW batch -> float32 logits (a static-shape engine gets its batch padded and trimmed)."""
        n = len(batch)
        size = max(n, self.min_batch)
        if size > n:
            batch = self.np.concatenate([batch, self.np.repeat(batch[-1:], size - n, axis=0)])
        x = self.np.ascontiguousarray(batch, dtype=self.in_dtype)
        self.context.set_input_shape(self.input, tuple(x.shape))
        out = self.np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype)
        self.cuda.to_device(self.d_in, x)
        self.context.set_tensor_address(self.input, self.d_in)
        self.context.set_tensor_address(self.output, self.d_out)
        if not self.context.execute_async_v3(self.cuda.stream.value or 0):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.cuda.sync()
        self.cuda.to_host(out, self.d_out)
        return out[:n].astype(self.np.float32)

    def close(self) -> None:
        self.cuda.free(self.d_in)
        self.cuda.free(self.d_out)


def _timed(engine: _Engine, images: Any, batch: int, warmup: int, iters: int) -> dict[str, Any]:
    x = images[:batch]
    if len(x) < batch:
        x = engine.np.concatenate([x] * (batch // max(len(x), 1) + 1))[:batch]
    for _ in range(warmup):
        engine.run(x)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        engine.run(x)
        times.append(time.perf_counter() - start)
    return latency_stats(times, batch)


def _load_parity(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    import numpy as np

    meta_path = folder / PARITY_JSON
    for path in (meta_path, folder / PARITY_IMAGES, folder / PARITY_REFERENCE):
        if not path.is_file():
            raise SystemExit(f"error: {path.name} is missing: export the run again with --trt for this target")
    meta = json.loads(meta_path.read_text())
    images = np.load(folder / PARITY_IMAGES, allow_pickle=False)
    reference = np.load(folder / PARITY_REFERENCE, allow_pickle=False)
    if images.dtype != np.uint8 or images.ndim != 4 or reference.ndim != 2 or len(images) != len(reference):
        raise SystemExit("error: parity files do not match each other; export the run again")
    mean = np.asarray(meta["mean"], dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
    std = np.asarray(meta["std"], dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
    normalized = (images.astype(np.float32) - mean) / std
    return normalized, reference.astype(np.float32), meta


def validate_engines(args: argparse.Namespace) -> int:
    """Every engine of the folder on this device: record check, deserialize, parity, latency -> result JSON."""
    import tensorrt as trt

    folder = Path(args.folder)
    images, reference, meta = _load_parity(folder)
    gate = float(args.gate if args.gate is not None else meta.get("gate", 0.99))
    current = {"tensorrt_version": trt.__version__, **device_info()}
    cuda = _Cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    results = {}
    for file, name in ENGINES.items():
        path = folder / file
        if not path.is_file():
            continue
        results[name] = _validate_one(trt, cuda, logger, path, name, images, reference, gate, args)
        print(f"{name:<9} {results[name]['status']:<11} {results[name]['reason'] or ''}")
    if not results:
        raise SystemExit(f"error: no engine in {folder}: run ./build_engine.sh first")
    result = {
        "format": RESULT_FORMAT,
        "version": 1,
        "device": current,
        "parity_set": {
            "n": len(images),
            "source": meta.get("source"),
            "reference_sha256": sha256(folder / PARITY_REFERENCE),
        },
        "gate": gate,
        "engines": results,
        "passed": all(r["status"] == "ok" for r in results.values()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2, allow_nan=False))
    print(f"wrote {out}: bring it back and run `eikd-edge validate RUN --device-result {out.name}`")
    return 0 if result["passed"] else 2


def _validate_one(
    trt: Any, cuda: _Cuda, logger: Any, path: Path, name: str, images: Any, reference: Any, gate: float, args: Any
) -> dict[str, Any]:
    record_path = Path(str(path) + ".json")
    if not record_path.is_file():
        return engine_result(name, path.name, None, "failed", f"no build record {record_path.name}: rebuild it")
    try:
        record = json.loads(record_path.read_text())
    except ValueError as exc:
        return engine_result(name, path.name, None, "failed", f"unreadable build record: {exc}")
    current = {"tensorrt_version": trt.__version__, **device_info()}
    problems = record_problems(record, current)
    if problems:
        return engine_result(name, path.name, record, "failed", "engine was built for " + "; ".join(problems))
    runtime = trt.Runtime(logger)
    if record.get("dla_core") is not None:
        runtime.DLA_core = int(record["dla_core"])  # the core is chosen at deserialization, not stored in the plan
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        return engine_result(name, path.name, record, "failed", "TensorRT could not deserialize the engine")
    runner = _Engine(trt, cuda, engine, record)
    try:
        step = runner.max_batch
        logits = [runner.run(images[i : i + step]) for i in range(0, len(images), step)]
        import numpy as np

        figures = parity_figures(np.concatenate(logits), reference, gate)
        batches = sorted({runner.min_batch, int(record["opt_shape"][0])})
        latency = [_timed(runner, images, b, args.warmup, args.iters) for b in batches]
    finally:
        runner.close()
    status = "ok" if figures["passed"] else "failed_gate"
    reason = None if figures["passed"] else "top-1 agreement {:.4f} < gate {}".format(figures["agree_student"], gate)
    return engine_result(name, path.name, record, status, reason, parity=figures, latency=latency)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eikd_device.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print this device's identity as JSON")
    key = sub.add_parser("cache-key", help="print the cache key for a TensorRT version on this device")
    key.add_argument("trt_version")
    rec = sub.add_parser("record", help="write ENGINE.json after a trtexec build")
    for field in ("engine", "precision", "onnx", "dla", "target", "low", "opt", "high", "trt_version"):
        rec.add_argument(field)
    rec.add_argument("strongly_typed", choices=("yes", "no"))
    val = sub.add_parser("validate", help="run every engine on the parity images; write the result JSON")
    val.add_argument("--folder", default=".")
    val.add_argument("--out", default="device-result.json")
    val.add_argument("--gate", type=float, default=None)
    val.add_argument("--warmup", type=int, default=20)
    val.add_argument("--iters", type=int, default=200)
    args = parser.parse_args(argv)
    if args.command == "info":
        print(json.dumps(device_info(), indent=2))
        return 0
    if args.command == "cache-key":
        print(cache_key(args.trt_version, device_info()))
        return 0
    if args.command == "record":
        return write_record(args)
    return validate_engines(args)


if __name__ == "__main__":
    sys.exit(main())
