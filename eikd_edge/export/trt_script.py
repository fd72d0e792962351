"""build_engine.sh: the trtexec commands (and build records) to make the engines on the target device itself.

Written when this machine has no TensorRT or no GPU, with the same batch profile, precision flags and workspace as
an in-process build. INT8 uses TensorRT's calibration cache when one exists, else the symmetric QDQ ONNX
(explicit quantization), since a TensorRT calibration cache cannot be computed without TensorRT.
"""

from __future__ import annotations

from pathlib import Path

from eikd_edge import __version__
from eikd_edge.atomic import write_atomic
from eikd_edge.export.formats import CALIBRATION_CACHE
from eikd_edge.export.targets import Target
from eikd_edge.export.tensorrt import RECORD_FORMAT

# Same fields and sources (libcuda via ctypes, tensorrt.__version__) as eikd_edge.export.tensorrt.current_device,
# so a record written on the device matches what eikd-edge checks there before it loads the engine.

_RECORD_PY = """import ctypes, json, sys
import tensorrt as trt
engine, precision, onnx, dla, target, low, opt, high = sys.argv[1:9]
cuda = ctypes.CDLL("libcuda.so.1")
cuda.cuInit(0)
dev, major, minor, ver = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
name = ctypes.create_string_buffer(256)
cuda.cuDeviceGet(ctypes.byref(dev), 0)
cuda.cuDeviceGetName(name, 256, dev)
cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)
cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
cuda.cuDriverGetVersion(ctypes.byref(ver))
shape = lambda text: [int(v) for v in text.split("x")]
record = {
    "format": "%(format)s",
    "tensorrt_version": trt.__version__,
    "gpu_name": name.value.decode(),
    "compute_capability": f"{major.value}.{minor.value}",
    "cuda_version": f"{ver.value // 1000}.{ver.value %% 1000 // 10}",
    "precision": precision,
    "input_name": "images",
    "min_shape": shape(low),
    "opt_shape": shape(opt),
    "max_shape": shape(high),
    "target": target,
    "dla_core": None if dla == "none" else int(dla),
    "onnx": onnx,
    "built_with": "trtexec via build_engine.sh",
}
with open(engine + ".json", "w") as handle:
    json.dump(record, handle, indent=2)
print(f"wrote {engine}.json ({record['gpu_name']}, TensorRT {record['tensorrt_version']})")
"""


def build_script(
    target: Target, precisions: list[str], chw: tuple[int, int, int], engines: dict[str, str], qdq_onnx: str | None
) -> str:
    """The text of build_engine.sh: one trtexec call (plus its build record) per precision, same profile as here."""
    dims = "x".join(str(d) for d in chw)
    low, opt, high = (f"{n}x{dims}" for n in (target.batch.min, target.batch.opt, target.batch.max))
    lines = [
        "#!/usr/bin/env bash",
        f"# Build TensorRT engine(s) for {target.name} ON THAT DEVICE: an engine only runs on the GPU model and",
        "# TensorRT version that built it. Copy this whole export folder to the device, then run ./build_engine.sh",
        f"# Target: {target.description}",
        f"# Written by eikd-edge {__version__}. Override the tools with TRTEXEC=... PYTHON=...",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        'PYTHON="${PYTHON:-python3}"',
        f"SHAPES=(--minShapes=images:{low} --optShapes=images:{opt} --maxShapes=images:{high})",
        "COMMON=(--timingCacheFile=timing.cache"
        + (f" --memPoolSize=workspace:{target.workspace_mib}" if target.workspace_mib else "")
        + ")",
        "",
        "record() {  # engine precision onnx dla: the build record eikd-edge checks before loading an engine",
        '  "$PYTHON" - "$@" <<\'PY\' || echo "warning: no build record for $1 (needs python3 with tensorrt)" >&2',
        (_RECORD_PY % {"format": RECORD_FORMAT}).rstrip(),
        "PY",
        "}",
    ]
    for precision in precisions:
        onnx_file, flags = "student.onnx", []
        if precision == "fp16":
            flags = ["--fp16"]
        elif precision == "int8" and qdq_onnx is None:
            flags = ["--int8", "--fp16", f"--calib={CALIBRATION_CACHE}"]
        elif precision == "int8":  # explicit quantization: the Q/DQ scales come from the ONNX itself
            onnx_file, flags = qdq_onnx, ["--int8", "--fp16"]
        dla = target.dla_core if precision != "fp32" else None
        if dla is not None:
            flags += [f"--useDLACore={dla}", "--allowGPUFallback"]
        engine = engines[precision]
        trtexec = ['"$TRTEXEC"', f"--onnx={onnx_file}", '"${SHAPES[@]}"', '"${COMMON[@]}"', *flags]
        record = [engine, precision, onnx_file, "none" if dla is None else str(dla), target.name, low, opt, high]
        lines += ["", f"echo '== {precision}: {engine}'", " ".join([*trtexec, f"--saveEngine={engine}"])]
        lines.append(" ".join(["record", *record]))
    return "\n".join(lines) + "\n"


def write_build_script(path: Path, text: str) -> Path:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    path.chmod(0o755)
    return path
