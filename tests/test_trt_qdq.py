"""The Q/DQ model written for TensorRT (student.int8.trt.onnx): the layout of NVIDIA's ORT -> TensorRT recipe, and
the parity gate enforced on it before any on-device build script is written."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from run_fixture import FixtureRun, fresh_run

from eikd_edge.export.pipeline import ExportRequest, export_run
from eikd_edge.formats import BUILD_SCRIPT, TRT_QDQ_ONNX


@pytest.fixture(scope="module")
def qdq_run(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    run = fresh_run(tmp_path_factory, "qdq-run")
    export_run(run.root, ExportRequest(onnx=True, trt_precisions=("int8",), target="jetson-orin-nano", threads=1))
    return run


def test_every_weight_dq_is_fed_by_a_q_and_no_dq_output_is_shared(qdq_run: FixtureRun) -> None:
    graph = onnx.load(str(qdq_run.run.export_dir / TRT_QDQ_ONNX)).graph
    produced_by = {out: node for node in graph.node for out in node.output}
    initializers = {i.name for i in graph.initializer}
    consumers = Counter(name for node in graph.node for name in node.input)
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    weights = [n for n in dq if n.input[0] in initializers or produced_by[n.input[0]].input[0] in initializers]
    assert len(weights) >= 5  # every conv's weight goes through a pair
    assert all(n.input[0] not in initializers for n in dq), "a DQ reads an INT8 initializer directly"
    assert all(produced_by[n.input[0]].op_type == "QuantizeLinear" for n in dq)
    assert all(consumers[n.output[0]] == 1 for n in dq), "a DQ output feeds more than one node"


def _noise_folder(folder: Path, count: int = 300) -> Path:
    """Real PNG files of uniform noise: the student's top-2 margins are tiny there, so INT8 flips some decisions."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def test_qdq_model_below_the_gate_gets_no_build_script(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = fresh_run(tmp_path_factory, "qdq-gate")
    noise = _noise_folder(tmp_path_factory.mktemp("noise") / "field")
    request = ExportRequest(
        onnx=True,
        trt_precisions=("fp16", "int8"),
        target="jetson-orin-nano",
        threads=1,
        gate=1.0,
        calib_images=1,
        images=noise,
    )
    result = export_run(run.root, request)
    int8 = next(o for o in result.outcomes if o.name == "trt-int8")
    assert int8.status == "failed_gate" and "no INT8 build script" in (int8.reason or "")
    assert "try --calib-images" in (int8.reason or "")
    script = (run.run.export_dir / BUILD_SCRIPT).read_text()
    assert "student.fp16.engine" in script and "int8" not in script.lower()  # FP16 still built on the device
    on_device = json.loads(run.run.export_record.read_text())["on_device"]
    assert on_device["trt-int8"]["status"] == "failed_gate" and "script" not in on_device["trt-int8"]
    assert not on_device["trt-int8"]["qdq_parity_onnxruntime"]["passed"]
