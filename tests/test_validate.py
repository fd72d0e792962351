"""validate: every artifact vs the student and the teacher on field images, the label-free gate and exit code 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from run_fixture import FixtureRun, fresh_run
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.export.fieldset import FieldImages
from eikd_edge.export.parity import Reference, parity

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    """Two export calls: export.json must accumulate, and --int8 must reuse the up-to-date student.onnx."""
    run = fresh_run(tmp_path_factory, "validate-run")
    first = runner.invoke(app, ["export", str(run.root), "--onnx", "--threads", "1"], terminal_width=120)
    assert first.exit_code == 0, first.output
    onnx_entry = json.loads(run.run.export_record.read_text())["artifacts"]["onnx"]
    second = runner.invoke(app, ["export", str(run.root), "--int8", "--threads", "1"], terminal_width=120)
    assert second.exit_code == 0, second.output
    record = json.loads(run.run.export_record.read_text())
    assert record["artifacts"]["onnx"] == onnx_entry and "onnx-int8" in record["artifacts"]
    return run


def _copy(run: FixtureRun, tmp_path_factory: pytest.TempPathFactory, name: str) -> FixtureRun:
    target = tmp_path_factory.mktemp(name) / "run"
    shutil.copytree(run.root, target)
    return FixtureRun(type(run.run)(target), run.teacher, run.pool, run.val)


def test_validate_passes_the_gate_on_good_artifacts(exported: FixtureRun) -> None:
    result = runner.invoke(app, ["validate", str(exported.root), "--threads", "1"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "onnx-int8" in result.output and "gate split" in result.output
    report = json.loads((exported.root / "validate.json").read_text())
    assert report["passed"] and report["images"] == {"source": "field pool (gate split)", "n": 38, "skipped": 0}
    assert set(report["artifacts"]) == {"onnx", "onnx-int8"}
    assert 0.0 <= report["student"]["agree_teacher"] <= 1.0
    record = json.loads(exported.run.export_record.read_text())
    for name in ("onnx", "onnx-int8"):
        assert record["artifacts"][name]["status"] == "ok"
        assert record["artifacts"][name]["parity"]["gate"] == 0.99
    assert record["artifacts"]["onnx-int8"]["quantization"]["chosen"]  # validate merges, never drops fields


def test_validate_with_labels_and_an_image_folder(exported: FixtureRun) -> None:
    args = [
        "validate",
        str(exported.root),
        "--images",
        str(exported.pool),
        "--val",
        str(exported.val),
        "--gate",
        "0.95",
    ]
    result = runner.invoke(app, args, terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output
    report = json.loads((exported.root / "validate.json").read_text())
    assert report["images"]["n"] == 48 and report["images"]["source"].startswith("folder")
    assert 0.0 < report["teacher"]["top1"] <= 1.0 and 0.0 < report["student"]["top1"] <= 1.0
    onnx_parity = report["artifacts"]["onnx"]["parity"]
    assert onnx_parity["top1"] == report["student"]["top1"] and onnx_parity["n_images"] == 48
    assert onnx_parity["gate"] == 0.95 and report["passed"]


def test_broken_artifact_fails_the_gate_with_exit_2(
    exported: FixtureRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = _copy(exported, tmp_path_factory, "broken")
    path = run.run.export_dir / "student.onnx"
    model = onnx.load(str(path))
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    weight = next(init for init in model.graph.initializer if init.name == gemm.input[1])
    weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight)[::-1]), weight.name))
    onnx.save(model, str(path))
    result = runner.invoke(app, ["validate", str(run.root), "--threads", "1"], terminal_width=160)
    assert result.exit_code == 2, result.output
    assert "failed gate" in result.output and "onnx" in result.output
    record = json.loads(run.run.export_record.read_text())
    assert record["artifacts"]["onnx"]["status"] == "failed_gate"
    assert record["artifacts"]["onnx"]["parity"]["agree_student"] < 0.99
    assert record["artifacts"]["onnx-int8"]["status"] == "ok"
    assert not json.loads((run.root / "validate.json").read_text())["passed"]


def test_validate_needs_exported_artifacts(exported: FixtureRun, tmp_path_factory: pytest.TempPathFactory) -> None:
    fresh = fresh_run(tmp_path_factory, "never-exported")
    result = runner.invoke(app, ["validate", str(fresh.root)])
    assert result.exit_code == 1 and "nothing exported" in result.output
    run = _copy(exported, tmp_path_factory, "onnx-gone")
    (run.run.export_dir / "student.onnx").unlink()
    result = runner.invoke(app, ["validate", str(run.root)])
    assert result.exit_code == 1 and "student.onnx is missing" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_parity_figures() -> None:
    student = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    artifact = student.copy()
    artifact[3] = [1.0, 0.0]  # one flip
    images = FieldImages(np.zeros((4, 3, 2, 2), np.uint8), ["a", "b", "c", "d"], "test", [None] * 4)
    ref = Reference(images, student, teacher=np.array([[1, 0], [1, 0], [1, 0], [1, 0]], dtype=np.float32))
    result = parity(artifact, ref, gate=0.99)
    assert result.agree_student == 0.75 and result.flip_rate == 0.25 and not result.passed
    assert result.agree_teacher == 0.75 and result.max_abs_dlogit == 1.0 and result.n_images == 4
    assert result.max_abs_dprob == pytest.approx(1 / (1 + np.exp(-1)) - 1 / (1 + np.exp(1)))
