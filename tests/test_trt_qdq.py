"""The Q/DQ model written for TensorRT (student.int8.trt.onnx): the layout of NVIDIA's ORT -> TensorRT recipe, and
the parity gate enforced on it before any on-device build script is written."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image
from run_fixture import SPEC, FixtureRun, fresh_run

from eikd_edge.checkpoint import load_student
from eikd_edge.data import normalize
from eikd_edge.export.fieldset import folder_images
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


def _boundary_folder(run: FixtureRun, folder: Path, pairs: int = 24) -> Path:
    """Real PNGs on the FP32 student's decision boundary: blends of two field images that the student puts in
    different classes, searched (in 8-bit pixel steps) to the last blend before the decision changes and the first
    after. Their top-2 margins are a few thousandths of a logit, far below INT8's rounding error, so some of them
    flip under any INT8 model however it is calibrated or fine-tuned: a 100% gate cannot be met on them."""
    folder.mkdir()
    student = load_student(run.run.student).model
    field = folder_images(run.pool, SPEC, 1000).images

    def predict(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return student(normalize(batch, SPEC))

    classes = predict(field).argmax(1)
    written = 0
    for i in range(len(field)):
        for j in range(i + 1, len(field)):
            if written >= 2 * pairs:
                break
            if classes[i] == classes[j]:
                continue
            a, b = field[i].float(), field[j].float()
            low, high = 0.0, 1.0  # the blend at `low` keeps image i's class, at `high` image j's
            for _ in range(24):
                mid = (low + high) / 2
                blend = (a + mid * (b - a)).round().to(torch.uint8)
                if predict(blend[None]).argmax(1).item() == classes[i]:
                    low = mid
                else:
                    high = mid
            for t in (low, high):
                pixels = (a + t * (b - a)).round().to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{written:04d}.png")
                written += 1
    decoded = folder_images(folder, SPEC, 1000).images
    top2 = predict(decoded).topk(2, dim=1).values
    assert len(decoded) == 2 * pairs and float((top2[:, 0] - top2[:, 1]).median()) < 0.01, "not on the boundary"
    return folder


def test_qdq_model_below_the_gate_gets_no_build_script(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = fresh_run(tmp_path_factory, "qdq-gate")
    boundary = _boundary_folder(run, tmp_path_factory.mktemp("boundary") / "field")
    request = ExportRequest(
        onnx=True,
        trt_precisions=("fp16", "int8"),
        target="jetson-orin-nano",
        threads=1,
        gate=1.0,
        calib_images=1,
        images=boundary,
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
