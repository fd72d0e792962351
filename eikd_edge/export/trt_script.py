"""build_engine.sh: the trtexec commands (and build records) that make the engines on the target device itself.

Written when this process cannot build for the target (no TensorRT, no GPU, or another device than the target's).
The script reads the device's TensorRT version from trtexec's banner ("&&&& RUNNING TensorRT.trtexec [TensorRT
v100300]") and takes the same path as an in-process build (eikd_edge.export.trt_paths): --fp16/--int8 flags on the
FP32 ONNX for 8.5/10 (INT8 from a calibration cache made on this very TensorRT + device, else the Q/DQ ONNX), the
FP16 or Q/DQ ONNX on 11 (strongly typed: no precision flags exist there). 8.5 ends a build with --buildOnly, 10 and
11 with --skipInference. Timing and calibration caches carry a key (TensorRT version + device, from eikd_device.py);
one made elsewhere is moved aside, never half-used. Each engine gets its build record from eikd_device.py record.
"""

from __future__ import annotations

from pathlib import Path

from eikd_edge import __version__
from eikd_edge.atomic import write_atomic
from eikd_edge.export.targets import Target
from eikd_edge.export.tensorrt import engine_shapes
from eikd_edge.formats import CALIBRATION_CACHE, DEVICE_SCRIPT, FP16_ONNX, TIMING_CACHE, TRT_QDQ_ONNX

_PRELUDE = r"""set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"
PYTHON="${PYTHON:-python3}"
if ! command -v "$TRTEXEC" >/dev/null 2>&1; then
  echo "error: trtexec not found (set TRTEXEC=/path/to/trtexec; JetPack has /usr/src/tensorrt/bin/trtexec)" >&2
  exit 1
fi
BANNER="$("$TRTEXEC" --help 2>&1 || true)"
NUM="$(printf '%s\n' "$BANNER" | sed -n 's/.*\[TensorRT v\([0-9][0-9]*\)\].*/\1/p' | head -n 1)"
if [ -z "$NUM" ]; then
  echo "error: cannot read the TensorRT version from '$TRTEXEC --help' (no '[TensorRT vNNNN]' banner)" >&2
  exit 1
fi
if [ "$NUM" -ge 100000 ]; then  # since 10: major*10000+minor*100+patch; before: major*1000+minor*100+patch
  MAJOR=$((NUM / 10000)); MINOR=$((NUM / 100 % 100))
else
  MAJOR=$((NUM / 1000)); MINOR=$((NUM / 100 % 10))
fi
TRT_VERSION="$MAJOR.$MINOR.$((NUM % 100))"
if [ "$MAJOR" -lt 8 ] || { [ "$MAJOR" -eq 8 ] && [ "$MINOR" -lt 5 ]; } || [ "$MAJOR" -ge 12 ]; then
  echo "error: trtexec is TensorRT $TRT_VERSION; this script supports TensorRT 8.5 to 11.x" >&2
  exit 1
fi
if [ "$MAJOR" -ge 11 ]; then STRONG=yes; else STRONG=no; fi    # 11: strongly typed, precision from the ONNX
if [ "$MAJOR" -ge 10 ]; then BUILD_ONLY=--skipInference; else BUILD_ONLY=--buildOnly; fi
KEY="$("$PYTHON" __DEVICE__ cache-key "$TRT_VERSION")"
echo "trtexec: TensorRT $TRT_VERSION (strongly typed: $STRONG); device: $KEY"

refuse_foreign() {  # a cache from another TensorRT version or device is moved aside, never half-used
  if [ -f "$1" ] && [ "$(cat "$1.key" 2>/dev/null || true)" != "$KEY" ]; then
    echo "refused $1: made for '$(cat "$1.key" 2>/dev/null || echo unknown)', not '$KEY' (moved to $1.refused)" >&2
    mv -f "$1" "$1.refused"
  fi
}
refuse_foreign __TIMING__
CALIB=no
if [ "$STRONG" = no ] && [ -f __CALIB__ ]; then refuse_foreign __CALIB__; [ -f __CALIB__ ] && CALIB=yes; fi

build() {  # engine precision onnx dla min opt max [trtexec flags...]
  local engine="$1" precision="$2" onnx="$3" dla="$4" low="$5" opt="$6" high="$7"
  shift 7
  echo "== $precision: $engine from $onnx"
  "$TRTEXEC" --onnx="$onnx" --minShapes="images:$low" --optShapes="images:$opt" --maxShapes="images:$high" \
    "${COMMON[@]}" "$BUILD_ONLY" "$@" --saveEngine="$engine"
  echo "$KEY" > __TIMING__.key
  "$PYTHON" __DEVICE__ record "$engine" "$precision" "$onnx" "$dla" __TARGET__ "$low" "$opt" "$high" \
    "$TRT_VERSION" "$STRONG"
}
"""


def build_script(target: Target, precisions: list[str], chw: tuple[int, int, int], engines: dict[str, str]) -> str:
    """The text of build_engine.sh: one build (plus its record) per precision, with the in-process build's shapes."""
    workspace = f" --memPoolSize=workspace:{target.workspace_mib}" if target.workspace_mib else ""
    prelude = (
        _PRELUDE.replace("__DEVICE__", DEVICE_SCRIPT)
        .replace("__TIMING__", TIMING_CACHE)
        .replace("__CALIB__", CALIBRATION_CACHE)
        .replace("__TARGET__", target.name)
    )
    lines = [
        "#!/usr/bin/env bash",
        f"# Build TensorRT engine(s) for {target.name} ON THAT DEVICE: an engine only runs on the GPU model and",
        "# TensorRT version that built it. Copy this whole export folder to the device, then run ./build_engine.sh",
        "# and python3 eikd_device.py validate (writes device-result.json for `eikd-edge validate --device-result`).",
        f"# Target: {target.description}",
        f"# Written by eikd-edge {__version__} for TensorRT 8.5 (JetPack 5), 10.x (JetPack 6) and 11.x.",
        "# Override the tools with TRTEXEC=... PYTHON=...",
        prelude.rstrip("\n"),
        f"COMMON=(--timingCacheFile={TIMING_CACHE}{workspace})",
    ]
    for precision in precisions:
        lines += _build_lines(target, precision, chw, engines[precision])
    lines += ["", 'echo "done: now run  $PYTHON eikd_device.py validate"']
    return "\n".join(lines) + "\n"


def _build_lines(target: Target, precision: str, chw: tuple[int, int, int], engine: str) -> list[str]:
    """One precision's build line(s): a blank line, then the build call, by TensorRT's typing where it differs."""
    shapes = engine_shapes(target, precision, chw)
    low, opt, high = ("x".join(str(d) for d in shapes[k]) for k in ("min", "opt", "max"))
    dla = target.dla_core if precision != "fp32" else None
    dla_flags = [f"--useDLACore={dla}", "--allowGPUFallback"] if dla is not None else []
    head = ["build", engine, precision]
    tail = ["none" if dla is None else str(dla), low, opt, high]

    def call(onnx: str, *flags: str, head: list[str] = head, tail: list[str] = tail, dla: list[str] = dla_flags) -> str:
        return " ".join([*head, onnx, *tail, *flags, *dla])

    lines = [""]
    if precision == "fp32":
        lines.append(call("student.onnx"))
    elif precision == "fp16":
        lines += [
            'if [ "$STRONG" = yes ]; then',
            "  " + call(FP16_ONNX),
            "else",
            "  " + call("student.onnx", "--fp16"),
            "fi",
        ]
    else:
        calib = [f"--calib={CALIBRATION_CACHE}"] + [f"--{k}ShapesCalib=images:{opt}" for k in ("min", "opt", "max")]
        lines += [
            'if [ "$STRONG" = yes ]; then  # explicit quantization: the scales come from the Q/DQ nodes',
            "  " + call(TRT_QDQ_ONNX),
            'elif [ "$CALIB" = yes ]; then  # a calibration cache made by this TensorRT on this device',
            "  " + call("student.onnx", "--int8", "--fp16", *calib),
            "else",
            "  " + call(TRT_QDQ_ONNX, "--int8", "--fp16"),
            "fi",
        ]
    return lines


def write_build_script(path: Path, text: str) -> Path:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    path.chmod(0o755)
    return path
