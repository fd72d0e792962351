"""Contract test of build_engine.sh's trtexec flags for TensorRT 8.5, 10.3 and 11.0. It proves nothing about engines.

No TensorRT can be installed here, so build_engine.sh runs for real (bash, eikd_device.py) against a RECORDER trtexec
placed first on PATH: it prints the version banner of the chosen release, checks every flag it gets against that
release's option list, fails on an unknown flag, and writes a dummy engine. The option lists are the options trtexec
prints in its help, taken from NVIDIA's TensorRT OSS samples/common/sampleOptions.cpp at tags 8.5.3, v10.3.0 and v11.0
(11.0's --int8 is listed only for safety builds and is left out, as NVIDIA's 10.x-to-11.x migration guide says).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from eikd_edge.export.targets import load_target
from eikd_edge.export.trt_paths import banner_version, build_path
from eikd_edge.export.trt_script import build_script
from eikd_edge.trt_engine import version_from_number

REPO = Path(__file__).resolve().parents[1]
DEVICE_SCRIPT = REPO / "eikd_edge" / "resources" / "device" / "eikd_device.py"

_COMMON = (
    "allowGPUFallback avgRuns avgTiming consistency device directIO dumpLayerInfo dumpOutput dumpProfile dumpRefit "
    "duration exportLayerInfo exportOutput exportProfile exportTimes exposeDMA help idleTime inputIOFormats iterations "
    "loadEngine loadInputs maxShapes memPoolSize minShapes noBuilderCache noDataTransfers noTF32 onnx optShapes "
    "outputIOFormats percentile persistentCacheRatio preview profilingVerbosity refit safe saveEngine "
    "separateProfileRun serialized shapes sleepTime sparsity std tacticSources threads timeDeserialize timeRefit "
    "timingCacheFile useCudaGraph useDLACore useManagedMemory useSpinWait verbose warmUp"
)
OPTIONS = {
    "8.5.3": _COMMON + " batch best buildOnly calib deploy fp16 heuristic int8 layerOutputTypes layerPrecisions "
    "maxBatch maxShapesCalib minShapesCalib minTiming model optShapesCalib output plugins precisionConstraints "
    "restricted streams uff uffInput uffNHWC workspace",
    "10.3.0": _COMMON + " allocationStrategy allowWeightStreaming best bf16 buildDLAStandalone "
    "builderOptimizationLevel calib calibProfile dumpOptimizationProfile dumpRawBindingsToFile dynamicPlugins "
    "errorOnTimingCacheMiss "
    "excludeLeanRuntime fp16 fp8 getPlanVersionOnly hardwareCompatibilityLevel ignoreParsedPluginLibs infStreams int4 "
    "int8 layerDeviceTypes layerOutputTypes layerPrecisions leanDLLPath markDebug maxAuxStreams maxShapesCalib "
    "minShapesCalib noCompilationCache optShapesCalib pluginInstanceNorm precisionConstraints profile restricted "
    "runtimePlatform saveDebugTensors setPluginsToSerialize skipInference staticPlugins stripAllWeights stripWeights "
    "stronglyTyped tempdir tempfileControls useProfile versionCompatible weightStreamingBudget weightless",
    "11.0.0": _COMMON + " adjustForDLA allocationStrategy allowWeightStreaming asyncFileReader buildDLAStandalone "
    "builderOptimizationLevel cpuOnly decomposableAttentions dumpKernelText dumpOptimizationProfile "
    "dumpRawBindingsToFile dynamicPlugins enablePluginOverride errorOnTimingCacheMiss excludeLeanRuntime "
    "getPlanVersionOnly hardwareCompatibilityLevel ignoreParsedPluginLibs includeDataTransfers infStreams "
    "l2LimitForTiling layerDeviceTypes leanDLLPath markDebug markUnfusedTensorsAsDebugTensors maxAuxStreams maxTactics "
    "monitorMemory noCompilationCache noCudaGraph noSpinWait pluginInstanceNorm profile refitFromOnnx "
    "remoteAutoTuningConfig reportCapabilityDLA runtimePlatform safetyPlugins saveAllDebugTensors saveDebugTensors "
    "setPluginsToSerialize skipInference staticPlugins stripAllWeights stripWeights stronglyTyped tempdir "
    "tempfileControls tilingOptimizationLevel uint8AsymmetricQuantizationDLA useProfile versionCompatible "
    "weightStreamingBudget",
}
BANNERS = {"8.5.3": "[TensorRT v8503]", "10.3.0": "[TensorRT v100300]", "11.0.0": "[TensorRT v110000] [b26]"}

RECORDER = r'''#!__PYTHON__
"""Recorder trtexec: banner of one TensorRT release, every flag checked against that release's options."""
import json, os, re, sys
version = os.environ["RECORDER_TRT"]
options = set(json.loads(os.environ["RECORDER_OPTIONS"])[version].split())
banner = json.loads(os.environ["RECORDER_BANNERS"])[version]
print("&&&& RUNNING TensorRT.trtexec " + banner + " # trtexec " + " ".join(sys.argv[1:]))
args = dict((a.split("=", 1) + [""])[:2] for a in sys.argv[1:])
for arg in sys.argv[1:]:
    name = arg.split("=", 1)[0]
    if not name.startswith("--") or name[2:] not in options:
        print("[E] Unknown option: " + arg + " (trtexec " + version + ")", file=sys.stderr)
        sys.exit(1)
if "--help" in args:
    sys.exit(0)
for key in ("--onnx", "--calib"):
    if key in args and not os.path.isfile(args[key]):
        print("[E] no such file: " + args[key], file=sys.stderr)
        sys.exit(1)
for key in ("--minShapes", "--optShapes", "--maxShapes", "--minShapesCalib", "--optShapesCalib", "--maxShapesCalib"):
    if key in args and not re.fullmatch(r"images:\d+x\d+x\d+x\d+", args[key]):
        print("[E] bad shape " + key + "=" + args[key], file=sys.stderr)
        sys.exit(1)
with open(os.environ["RECORDER_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
with open(args["--saveEngine"], "wb") as engine:
    engine.write(b"dummy engine, not TensorRT")
if "--timingCacheFile" in args and not os.path.isfile(args["--timingCacheFile"]):
    open(args["--timingCacheFile"], "wb").write(b"dummy timing cache")
'''

ENGINES = {"fp32": "student.engine", "fp16": "student.fp16.engine", "int8": "student.int8.engine"}


def _folder(tmp_path: Path, target_name: str, precisions: list[str]) -> Path:
    """An export folder as `export --trt` leaves it for the device (ONNX files are placeholders: trtexec is fake)."""
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("student.onnx", "student.fp16.trt.onnx", "student.int8.trt.onnx"):
        (folder / name).write_bytes(name.encode())
    shutil.copy(DEVICE_SCRIPT, folder / "eikd_device.py")
    text = build_script(load_target(target_name), precisions, (3, 32, 32), {p: ENGINES[p] for p in precisions})
    (folder / "build_engine.sh").write_text(text)
    (folder / "build_engine.sh").chmod(0o755)
    return folder


def _run(folder: Path, version: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    bindir = folder.parent / "bin"
    bindir.mkdir(exist_ok=True)
    recorder = bindir / "trtexec"
    recorder.write_text(RECORDER.replace("__PYTHON__", sys.executable))
    recorder.chmod(recorder.stat().st_mode | stat.S_IXUSR)
    log = folder.parent / "trtexec.log"
    log.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "RECORDER_TRT": version,
        "RECORDER_OPTIONS": json.dumps(OPTIONS),
        "RECORDER_BANNERS": json.dumps(BANNERS),
        "RECORDER_LOG": str(log),
    }
    env.pop("TRTEXEC", None)
    script = str(folder / "build_engine.sh")
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True, check=False)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return done, calls


def _flags(call: list[str]) -> dict[str, str]:
    return dict([*a.split("=", 1), ""][:2] for a in call)


pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="build_engine.sh needs bash")


@pytest.mark.parametrize("version", ["8.5.3", "10.3.0", "11.0.0"])
@pytest.mark.parametrize("target", ["jetson-orin-nano", "jetson-agx-orin"])
def test_build_engine_sh_passes_only_flags_that_trtexec_version_has(tmp_path: Path, version: str, target: str) -> None:
    folder = _folder(tmp_path, target, ["fp32", "fp16", "int8"])
    done, calls = _run(folder, version)
    assert done.returncode == 0, done.stderr + done.stdout
    assert len(calls) == 3
    strong = version.startswith("11")
    by_engine = {_flags(c)["--saveEngine"]: _flags(c) for c in calls}
    for precision, engine in ENGINES.items():
        flags = by_engine[engine]
        expected = build_path(version, precision, calibration_cache=False)
        assert flags["--onnx"] == expected.onnx
        assert ("--fp16" in flags) == expected.fp16_flag and ("--int8" in flags) == expected.int8_flag
        assert ("--buildOnly" if version == "8.5.3" else "--skipInference") in flags
        on_dla = target == "jetson-agx-orin" and precision != "fp32"
        assert (flags.get("--useDLACore") == "0") == on_dla
        if on_dla:  # DLA: static shapes
            assert flags["--minShapes"] == flags["--optShapes"] == flags["--maxShapes"] == "images:16x3x32x32"
        record = json.loads((folder / f"{engine}.json").read_text())
        assert record["tensorrt_version"] == version and record["tensorrt_version_source"] == "trtexec banner"
        assert record["strongly_typed"] is strong and record["precision"] == precision
        assert record["onnx"] == expected.onnx
        assert record["onnx_sha256"] == hashlib.sha256((folder / expected.onnx).read_bytes()).hexdigest()
        assert record["target"] == target and record["dla_core"] == (0 if on_dla else None)
        assert "sm_count" in record and "board" in record
    assert f"TensorRT {version}" in (folder / "timing.cache.key").read_text()


def test_recorder_rejects_a_flag_its_version_does_not_have(tmp_path: Path) -> None:
    """The recorder is strict: an FP16 script written for TensorRT 10 (with --fp16) fails against trtexec 11."""
    folder = _folder(tmp_path, "jetson-orin-nano", ["fp16"])
    text = (folder / "build_engine.sh").read_text().replace('if [ "$STRONG" = yes ]; then', "if false; then")
    (folder / "build_engine.sh").write_text(text)
    done, _ = _run(folder, "11.0.0")
    assert done.returncode != 0 and "Unknown option: --fp16" in done.stderr


@pytest.mark.parametrize(("key_matches", "version", "calib_used"), [(True, "10.3.0", True), (False, "10.3.0", False)])
def test_caches_from_another_tensorrt_or_device_are_refused(
    tmp_path: Path, key_matches: bool, version: str, calib_used: bool
) -> None:
    folder = _folder(tmp_path, "jetson-orin-nano", ["int8"])
    here = subprocess.run(
        [sys.executable, str(DEVICE_SCRIPT), "cache-key", version], capture_output=True, text=True, check=True
    ).stdout.strip()
    foreign = "TensorRT 8.5.2 | Orin | sm_87 | 8 SMs | NVIDIA Jetson Orin Nano Developer Kit"
    for cache in ("calibration.cache", "timing.cache"):
        (folder / cache).write_bytes(b"cache")
        (folder / f"{cache}.key").write_text((here if key_matches else foreign) + "\n")
    done, calls = _run(folder, version)
    assert done.returncode == 0, done.stderr
    flags = _flags(calls[0])
    assert ("--calib" in flags) == calib_used
    assert flags["--onnx"] == ("student.onnx" if calib_used else "student.int8.trt.onnx")
    if not key_matches:
        assert "refused calibration.cache" in done.stderr and (folder / "calibration.cache.refused").is_file()
        assert "refused timing.cache" in done.stderr and (folder / "timing.cache.refused").is_file()


def test_tensorrt_11_never_uses_a_calibration_cache(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "jetson-orin-nano", ["int8"])
    (folder / "calibration.cache").write_bytes(b"cache")
    done, calls = _run(folder, "11.0.0")
    assert done.returncode == 0, done.stderr
    assert _flags(calls[0])["--onnx"] == "student.int8.trt.onnx" and "--calib" not in _flags(calls[0])


@pytest.mark.parametrize(
    ("banner", "message"),
    [("no banner at all", "cannot read the TensorRT version"), ("[TensorRT v8401]", "supports TensorRT 8.5 to 11")],
)
def test_unreadable_or_unsupported_trtexec_stops_the_script(tmp_path: Path, banner: str, message: str) -> None:
    folder = _folder(tmp_path, "jetson-orin-nano", ["fp16"])
    BANNERS["8.4.1"] = banner
    OPTIONS["8.4.1"] = OPTIONS["8.5.3"]
    try:
        done, calls = _run(folder, "8.4.1")
    finally:
        del BANNERS["8.4.1"], OPTIONS["8.4.1"]
    assert done.returncode == 1 and message in done.stderr and not calls


def test_banner_numbers() -> None:
    assert version_from_number(8503) == "8.5.3" and version_from_number(100300) == "10.3.0"
    assert version_from_number(110000) == "11.0.0" and version_from_number(101301) == "10.13.1"
    assert banner_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help") == "10.3.0"
    assert banner_version("no banner") is None
