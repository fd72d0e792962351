"""ONNX Runtime static INT8: calibrated on the run's selected field images, candidates measured and recorded."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from run_fixture import FixtureRun, fresh_run
from typer.testing import CliRunner

from eikd_edge.checkpoint import load_student
from eikd_edge.cli import app
from eikd_edge.export.fieldset import calibration_entries, parity_entries, read_manifest, stratified
from eikd_edge.export.int8_settings import CANDIDATES
from eikd_edge.runtime import OnnxPredictor, TorchPredictor

runner = CliRunner()


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    run = fresh_run(tmp_path_factory, "int8-run")
    result = runner.invoke(app, ["export", str(run.root), "--int8", "--threads", "1"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "INT8 setting chosen on this machine" in result.output
    return run


def test_int8_implies_onnx_and_both_are_recorded(int8_run: FixtureRun) -> None:
    record = json.loads(int8_run.run.export_record.read_text())
    assert {"onnx", "onnx-int8"} <= set(record["artifacts"])
    entry = record["artifacts"]["onnx-int8"]
    assert entry["path"] == "student.int8.onnx" and entry["precision"] == "int8" and entry["status"] == "ok"
    assert entry["size_bytes"] < record["artifacts"]["onnx"]["size_bytes"]
    assert entry["parity"]["passed"] and entry["parity"]["agree_student"] >= 0.99


def test_int8_model_is_qdq_and_runs(int8_run: FixtureRun) -> None:
    path = int8_run.run.export_dir / "student.int8.onnx"
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    ckpt = load_student(int8_run.run.student)
    images = torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8)
    logits = OnnxPredictor(path, ckpt.spec, device="cpu", threads=1).predict_logits(images)
    assert logits.shape == (9, 10) and logits.dtype == np.float32 and np.isfinite(logits).all()
    reference = TorchPredictor(ckpt.model, ckpt.spec).predict_logits(images)
    assert np.abs(logits - reference).max() < 5.0  # quantized, but the same model


def test_every_candidate_and_the_choice_are_recorded(int8_run: FixtureRun) -> None:
    quant = json.loads(int8_run.run.export_record.read_text())["artifacts"]["onnx-int8"]["quantization"]
    candidates = quant["candidates"]
    assert [c["label"] for c in candidates] == [s.label for s in CANDIDATES]
    for candidate in candidates:
        assert candidate["latency_ms_b1"] > 0 and candidate["latency_ms_batch"] > 0 and candidate["batch"] == 8
        assert 0.0 <= candidate["agree_fp32"] <= 1.0 and candidate["passed"] == (candidate["agree_fp32"] >= 0.99)
    passing = [c for c in candidates if c["passed"]]
    assert passing, "no INT8 candidate passed the gate on the fixture"
    assert quant["chosen"] == min(passing, key=lambda c: c["latency_ms_batch"])
    assert quant["fp32"]["latency_ms_b1"] > 0 and quant["calibration_images"] == 10  # the pool's tuning quarter


def test_calibration_and_gate_images_never_overlap(int8_run: FixtureRun) -> None:
    """Calibration and sensitivity tune on the pool's tuning quarter; the gate grades on the rest, selected or not."""
    _, entries = read_manifest(int8_run.run)
    chosen = calibration_entries(entries, limit=6)
    graded, _ = parity_entries(entries, limit=1000)
    assert len(chosen) == 6 and len(graded) == 38 and len(calibration_entries(entries, 1000)) == 10
    assert not {e["path"] for e in calibration_entries(entries, 1000)} & {e["path"] for e in graded}
    assert any(not e["selected"] for e in graded) and any(e["selected"] for e in graded)
    tuning = calibration_entries(entries, 1000)
    assert len({e["predicted"] for e in chosen}) == min(6, len({e["predicted"] for e in tuning}))  # stratified


def test_stratified_round_robin_keeps_rare_classes() -> None:
    entries = [{"predicted": "a", "score": i} for i in range(20)] + [{"predicted": "b", "score": 0.5}]
    picked = stratified(entries, 4)
    assert [e["predicted"] for e in picked].count("b") == 1
    assert [e["score"] for e in picked if e["predicted"] == "a"] == [19, 18, 17]


def test_an_int8_model_not_faster_than_fp32_is_not_recommended(int8_run: FixtureRun, tmp_path: Path) -> None:
    from eikd_edge.commands.export_cmd import _int8_line
    from eikd_edge.export.int8_candidates import Candidate
    from eikd_edge.export.int8_settings import QuantSetting
    from eikd_edge.export.quantize import QuantResult

    slow = Candidate(QuantSetting("s8"), 3.0, 9.0, 8, 0.995, 0.1, True, n_images=1000)
    record = QuantResult(tmp_path / "i8.onnx", slow, [slow], 1.0, 4.0, 64, 1.0, 1000).record()
    assert record["faster_than_fp32"] is False and _int8_line(record).endswith("not recommended")
    fast = replace(slow, latency_ms_batch=2.0)
    record = QuantResult(tmp_path / "i8.onnx", fast, [fast], 1.0, 4.0, 64, 1.0, 1000).record()
    assert record["faster_than_fp32"] is True and "recommended" not in _int8_line(record)
    entry = json.loads(int8_run.run.export_record.read_text())["artifacts"]["onnx-int8"]
    quant = entry["quantization"]
    assert entry["recommended"] is (quant["chosen"]["latency_ms_batch"] < quant["fp32"]["latency_ms_batch"])
