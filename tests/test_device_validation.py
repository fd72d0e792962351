"""Engines validated where they run: device identity and target matching, refusals in validate, device results
imported into the run (hostile-file safe), the FP16 ONNX for TensorRT 11, and one target per export folder.

TensorRT is never mocked. The device result used here is produced by the device helper's own figure functions
from the FP16 ONNX's outputs in ONNX Runtime (standing in for an engine's outputs: what is tested is the file's
journey into the run, not TensorRT).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from run_fixture import FixtureRun, fresh_run
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.errors import EikdError
from eikd_edge.export import device as dev
from eikd_edge.export.targets import load_target
from eikd_edge.export.trt_checks import refusal_status
from eikd_edge.export.trt_paths import build_path
from eikd_edge.trt_engine import check_build_record, unavailable_reason

runner = CliRunner()
DEVICE_SCRIPT = Path(__file__).resolve().parents[1] / "eikd_edge" / "resources" / "device" / "eikd_device.py"
NANO = {
    "gpu_name": "Orin",
    "compute_capability": "8.7",
    "sm_count": 8,
    "board": "NVIDIA Jetson Orin Nano Developer Kit",
}
AGX = {**NANO, "sm_count": 16, "board": "NVIDIA Jetson AGX Orin Developer Kit"}
RTX = {"gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9", "sm_count": 128, "board": None}


def _device_module():
    spec = importlib.util.spec_from_file_location("eikd_device", DEVICE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_match_only_their_own_device() -> None:
    nano, agx, dgpu = (load_target(n) for n in ("jetson-orin-nano", "jetson-agx-orin", "x86-dgpu"))
    assert dev.target_mismatch(nano, NANO) is None and dev.target_mismatch(agx, AGX) is None
    assert "AGX Orin" in dev.target_mismatch(agx, NANO)  # same GPU name and compute capability, another board
    assert "compute capability 8.7" in dev.target_mismatch(nano, RTX)  # a GPU host is not a Jetson
    assert dev.target_mismatch(dgpu, RTX) is None and dev.target_mismatch(nano, None) == "no CUDA GPU is visible here"


def test_records_tell_orin_boards_apart_here_and_on_the_device() -> None:
    record = {"tensorrt_version": "10.3.0", **NANO}
    device = _device_module()
    assert device.record_problems(record, {"tensorrt_version": "10.3.0.30", **NANO}) == []
    check_build_record(record, {"tensorrt_version": "10.3.0.30", **NANO})
    for other, words in ((AGX, "SM count 8"), ({**NANO, "tensorrt_version": "8.5.2"}, "TensorRT 10.3.0")):
        current = {"tensorrt_version": "10.3.0", **other}
        assert any(words in p for p in device.record_problems(record, current))
        with pytest.raises(EikdError, match=words):
            check_build_record(record, current)


def test_cache_keys_refuse_caches_from_elsewhere(tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    key = dev.cache_key("10.3.0.30", NANO)
    assert key == _device_module().cache_key("10.3.0", NANO)  # same text on both sides
    assert dev.usable_cache(cache, key) == (False, None)
    cache.write_bytes(b"x")
    assert dev.usable_cache(cache, key)[0] is False  # no key file: unknown origin, refused
    dev.write_cache_key(cache, dev.cache_key("10.3.0", AGX))
    usable, why = dev.usable_cache(cache, key)
    assert not usable and "AGX Orin" in why
    dev.write_cache_key(cache, key)
    assert dev.usable_cache(cache, key) == (True, None)


def test_refused_engine_fails_on_its_device_and_is_skipped_elsewhere() -> None:
    why = "engine was built for TensorRT 8.5.2"
    assert refusal_status(None, why) == ("failed", why)
    status, reason = refusal_status("this board (x) is not jetson-orin-nano's", "no build record")
    assert status == "skipped" and "not this engine's device" in reason


def test_build_paths_by_tensorrt_version() -> None:
    assert build_path("8.5.2", "fp16", False).fp16_flag and not build_path("8.5.2", "fp16", False).strongly_typed
    assert build_path("10.3.0", "int8", True).calibrate
    assert build_path("10.3.0", "int8", False).onnx == "student.int8.trt.onnx"
    eleven = [build_path("11.1.0", p, True) for p in ("fp32", "fp16", "int8")]
    assert [p.onnx for p in eleven] == ["student.onnx", "student.fp16.trt.onnx", "student.int8.trt.onnx"]
    assert all(p.strongly_typed and not (p.fp16_flag or p.int8_flag or p.calibrate) for p in eleven)
    for version in ("8.4.1", "12.0.0"):
        with pytest.raises(EikdError, match="not supported"):
            build_path(version, "fp16", False)


# ---------------------------------------------------------------- export for a Jetson, then import a device result


@pytest.fixture(scope="module")
def jetson_export(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present here")
    run = fresh_run(tmp_path_factory, "jetson-export")
    args = ["export", str(run.root), "--trt", "--fp16", "--target", "jetson-orin-nano", "--threads", "1"]
    result = runner.invoke(app, args, terminal_width=160)
    assert result.exit_code == 0, result.output
    return run


def test_fp16_onnx_for_tensorrt_11_is_half_inside_and_float_outside(jetson_export: FixtureRun) -> None:
    folder = jetson_export.run.export_dir
    model = onnx.load(str(folder / "student.fp16.trt.onnx"))
    assert {i.data_type for i in model.graph.initializer if i.data_type in (1, 10)} == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    record = json.loads(jetson_export.run.export_record.read_text())["on_device"]["trt-fp16"]
    assert record["fp16_onnx"] == "student.fp16.trt.onnx"
    assert record["fp16_parity_onnxruntime"]["agree_student"] >= 0.99  # measured on the CPU before it ships


def _device_result(run: FixtureRun, tmp_path: Path, **change: object) -> Path:
    """A device-result.json as eikd_device.py validate writes it, from ONNX Runtime outputs of the FP16 ONNX."""
    import onnxruntime as ort

    device = _device_module()
    folder = run.run.export_dir
    meta = json.loads((folder / "parity.json").read_text())
    images = np.load(folder / "parity.images.npy").astype(np.float32)
    mean = np.asarray(meta["mean"], np.float32).reshape(1, 3, 1, 1) * 255
    std = np.asarray(meta["std"], np.float32).reshape(1, 3, 1, 1) * 255
    session = ort.InferenceSession(str(folder / "student.fp16.trt.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": (images - mean) / std})[0]
    figures = device.parity_figures(logits, np.load(folder / "parity.reference.npy"), 0.99)
    latency = [device.latency_stats([0.002, 0.0021, 0.0025], 1), device.latency_stats([0.01, 0.011], 8)]
    engine = device.engine_result("trt-fp16", "student.fp16.engine", None, "ok", None, parity=figures, latency=latency)
    result = {
        "format": "eikd-edge/device-result",
        "version": 1,
        "device": {"tensorrt_version": "10.3.0.30", **NANO, "cuda_version": "12.6"},
        "parity_set": {"n": len(images), "reference_sha256": device.sha256(folder / "parity.reference.npy")},
        "gate": 0.99,
        "engines": {"trt-fp16": engine},
        "passed": True,
        **change,
    }
    path = tmp_path / "device-result.json"
    path.write_text(json.dumps(result))
    return path


def test_device_result_is_imported_and_reported(
    jetson_export: FixtureRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = _copy(jetson_export, tmp_path_factory, "device-import")
    path = _device_result(run, tmp_path_factory.mktemp("result"))
    result = runner.invoke(app, ["validate", str(run.root), "--device-result", str(path)], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "Orin Nano" in result.output and "trt-fp16" in result.output
    imported = json.loads(run.run.export_record.read_text())["device_results"]["trt-fp16"]
    assert imported["status"] == "ok" and imported["parity"]["agree_student"] >= 0.99
    assert json.loads((run.root / "validate.json").read_text())["device"]["engines"]["trt-fp16"]["latency"]
    report = runner.invoke(app, ["report", str(run.root)], terminal_width=200)
    assert report.exit_code == 0, report.output
    markdown = (run.root / "report.md").read_text()
    assert "trt-fp16 on device" in markdown and "p50 2.10 ms" in markdown and "Orin Nano" in markdown


def test_device_result_with_a_failed_engine_exits_2(
    jetson_export: FixtureRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = _copy(jetson_export, tmp_path_factory, "device-failed")
    path = _device_result(run, tmp_path_factory.mktemp("failed"))
    data = json.loads(path.read_text())
    data["engines"]["trt-fp16"].update(status="failed", reason="engine was built for TensorRT 8.5.2", parity=None)
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["validate", str(run.root), "--device-result", str(path)], terminal_width=160)
    assert result.exit_code == 2 and "TensorRT 8.5.2" in result.output


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda text: text.replace('"agree_student": 1.0', '"agree_student": NaN'), "not a number JSON allows"),
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: text.replace('"format": "eikd-edge/device-result"', '"format": "x"'), "format"),
        (lambda text: text.replace('"p50_ms": 2.1', '"p50_ms": -2.1'), "p50_ms"),
        (lambda text: text.replace('"reference_sha256": "', '"reference_sha256": "0'), "reference_sha256"),
        (lambda text: text + " " * (1 << 20), "larger than"),
        (lambda text: "[" * 100000 + "]" * 100000, "not"),
    ],
)
def test_hostile_device_results_are_one_clear_error(
    jetson_export: FixtureRun, tmp_path_factory: pytest.TempPathFactory, mangle: object, words: str
) -> None:
    run = _copy(jetson_export, tmp_path_factory, "hostile")
    path = _device_result(run, tmp_path_factory.mktemp("hostile"))
    text = path.read_text()
    path.write_text(mangle(text))  # type: ignore[operator]
    result = runner.invoke(app, ["validate", str(run.root), "--device-result", str(path)])
    assert result.exit_code == 1, result.output
    assert words in result.output and len(result.output.strip().splitlines()) == 1
    assert "device_results" not in json.loads(run.run.export_record.read_text())


def test_device_result_from_another_export_is_refused(
    jetson_export: FixtureRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = _copy(jetson_export, tmp_path_factory, "other-export")
    sha = hashlib.sha256(b"another parity set").hexdigest()
    path = _device_result(run, tmp_path_factory.mktemp("other"), parity_set={"n": 13, "reference_sha256": sha})
    result = runner.invoke(app, ["validate", str(run.root), "--device-result", str(path)])
    assert result.exit_code == 1 and "another parity set" in result.output


def test_reexport_for_another_target_leaves_nothing_of_the_previous_one(
    jetson_export: FixtureRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = _copy(jetson_export, tmp_path_factory, "retarget")
    folder = run.run.export_dir
    assert (folder / "build_engine.sh").is_file() and (folder / "student.fp16.trt.onnx").is_file()
    result = runner.invoke(app, ["export", str(run.root), "--target", "x86-cpu", "--int8", "--threads", "1"])
    assert result.exit_code == 0, result.output
    record = json.loads(run.run.export_record.read_text())
    assert record["target"] == "x86-cpu" and "on_device" not in record
    leftovers = {"build_engine.sh", "eikd_device.py", "student.fp16.trt.onnx", "parity.json", "parity.images.npy"}
    assert not leftovers & {p.name for p in folder.iterdir()}
    assert "export folder was for jetson-orin-nano" in result.output


def _copy(run: FixtureRun, factory: pytest.TempPathFactory, name: str) -> FixtureRun:
    target = factory.mktemp(name) / "run"
    shutil.copytree(run.root, target)
    return FixtureRun(type(run.run)(target), run.teacher, run.pool, run.val)
