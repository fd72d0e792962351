"""TensorRT: the build-record check (pure), build_engine.sh when TensorRT is absent, real engines when present.

TensorRT is never mocked: the engine tests import the real package and skip cleanly without it or without CUDA.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from run_fixture import FixtureRun, fresh_run
from typer.testing import CliRunner

from eikd_edge.checkpoint import load_student
from eikd_edge.cli import app
from eikd_edge.errors import EikdError
from eikd_edge.export.targets import load_target
from eikd_edge.export.trt_script import build_script
from eikd_edge.trt_engine import check_build_record, unavailable_reason

runner = CliRunner()


RECORD = {"tensorrt_version": "8.6.2.3", "gpu_name": "Orin", "compute_capability": "8.7", "cuda_version": "12.2"}


def test_build_record_accepts_the_same_device() -> None:
    check_build_record(RECORD, dict(RECORD))
    check_build_record(RECORD, {**RECORD, "tensorrt_version": "8.6.2.9", "gpu_name": "NVIDIA Orin"})  # build no.


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tensorrt_version": "10.3.0.30"}, "TensorRT 8.6.2.3"),
        ({"compute_capability": "7.2", "gpu_name": "Xavier"}, "compute capability 8.7"),
        ({"gpu_name": "NVIDIA GeForce RTX 4090"}, "GPU Orin"),
    ],
)
def test_build_record_refuses_another_device(change: dict, words: str) -> None:
    with pytest.raises(EikdError, match="rebuild") as caught:
        check_build_record(RECORD, {**RECORD, **change})
    assert words in str(caught.value)


def test_build_record_must_be_complete() -> None:
    with pytest.raises(EikdError, match="lacks gpu_name"):
        check_build_record({"tensorrt_version": "10.0.1", "compute_capability": "8.9"}, RECORD)


def test_build_script_shapes_precisions_and_dla() -> None:
    target = load_target("jetson-agx-orin")
    engines = {"fp32": "student.engine", "fp16": "student.fp16.engine"}
    text = build_script(target, ["fp32", "fp16"], (3, 64, 48), engines)
    # fp32 runs on the GPU with the dynamic batch profile; fp16 on the DLA with a static batch (DLA has no dynamic dims)
    assert "build student.engine fp32 student.onnx none 1x3x64x48 16x3x64x48 64x3x64x48\n" in text
    dla = "0 16x3x64x48 16x3x64x48 16x3x64x48"
    assert f"build student.fp16.engine fp16 student.onnx {dla} --fp16 --useDLACore=0 --allowGPUFallback" in text
    assert f"build student.fp16.engine fp16 student.fp16.trt.onnx {dla} --useDLACore=0 --allowGPUFallback" in text
    assert "--memPoolSize=workspace:4096" in text and "--timingCacheFile=timing.cache" in text


@pytest.fixture(scope="module")
def script_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FixtureRun, object]:
    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present: engines are built here instead of a script")
    run = fresh_run(tmp_path_factory, "trt-script")
    args = ["export", str(run.root), "--trt", "--fp16", "--int8", "--target", "jetson-orin-nano", "--threads", "1"]
    return run, runner.invoke(app, args, terminal_width=160)


def test_without_tensorrt_a_ready_build_script_is_written(script_run: tuple[FixtureRun, object]) -> None:
    run, result = script_run
    assert result.exit_code == 0, result.output
    assert "build_engine.sh" in result.output and "on device" in result.output
    script = run.run.export_dir / "build_engine.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "1x3x32x32 8x3x32x32 32x3x32x32" in text and "--saveEngine=" in text
    assert "build student.fp16.engine fp16 student.onnx none 1x3x32x32 8x3x32x32 32x3x32x32 --fp16" in text
    assert "build student.int8.engine int8 student.int8.trt.onnx none 1x3x32x32 8x3x32x32 32x3x32x32" in text
    assert "--memPoolSize=workspace:1024" in text and "--timingCacheFile=timing.cache" in text
    assert "--useDLACore" not in text  # the Orin Nano has no DLA
    for name in ("eikd_device.py", "student.fp16.trt.onnx", "parity.images.npy", "parity.reference.npy"):
        assert (run.run.export_dir / name).is_file(), name
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


def test_script_mode_is_recorded_and_int8_source_is_symmetric_qdq(script_run: tuple[FixtureRun, object]) -> None:
    run, _ = script_run
    record = json.loads(run.run.export_record.read_text())
    assert "trt-fp16" not in record["artifacts"] and "trt-int8" not in record["artifacts"]
    on_device = record["on_device"]
    assert (
        on_device["trt-fp16"]["script"] == "build_engine.sh" and on_device["trt-fp16"]["target"] == "jetson-orin-nano"
    )
    assert on_device["trt-int8"]["qdq_onnx"] == "student.int8.trt.onnx"
    assert record["artifacts"]["onnx-int8"]["status"] == "ok"  # --int8 also builds the CPU INT8 model
    model = onnx.load(str(run.run.export_dir / "student.int8.trt.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # TensorRT: symmetric int8


def test_trt_on_an_onnxruntime_target_is_a_user_error(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = fresh_run(tmp_path_factory, "trt-cpu-target")
    result = runner.invoke(app, ["export", str(run.root), "--trt", "--target", "x86-cpu"])
    assert result.exit_code == 1 and "TensorRT --target" in result.output


def test_real_engine_builds_runs_and_checks_its_record(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU")
    from eikd_edge.runtime import TensorRTPredictor, TorchPredictor
    from eikd_edge.trt_engine import load_engine

    run = fresh_run(tmp_path_factory, "trt-real")
    args = ["export", str(run.root), "--trt", "--fp32", "--fp16", "--target", "x86-dgpu", "--gate", "0.5"]
    result = runner.invoke(app, args)  # this test is about building and running engines, not the gate
    assert result.exit_code == 0, result.output
    engine = run.run.export_dir / "student.fp16.engine"
    record = json.loads((run.run.export_dir / "student.fp16.engine.json").read_text())
    assert record["precision"] == "fp16" and record["max_shape"] == [256, 3, 32, 32]
    ckpt = load_student(run.run.student)
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    expected = TorchPredictor(ckpt.model, ckpt.spec).predict_logits(images)
    assert np.abs(TensorRTPredictor(engine, ckpt.spec).predict_logits(images) - expected).max() < 5e-2
    (run.run.export_dir / "student.fp16.engine.json").write_text(json.dumps({**record, "tensorrt_version": "1.0.0"}))
    with pytest.raises(EikdError, match="rebuild"):
        load_engine(engine)
