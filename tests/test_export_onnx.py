"""ONNX export: real zoo students through the real exporters, checked in ONNX Runtime; the export CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from run_fixture import FixtureRun, fresh_run
from typer.testing import CliRunner

from eikd_edge.checkpoint import StudentCheckpoint, load_student, save_student
from eikd_edge.cli import app
from eikd_edge.errors import EikdError
from eikd_edge.export.onnx import Parsable, export_onnx, read_metadata
from eikd_edge.export.pipeline import ExportRequest, export_run
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.zoo import build_model
from eikd_edge.runtime import OnnxPredictor, TorchPredictor

runner = CliRunner()


CLASSES = tuple(f"c{i}" for i in range(10))


def _checkpoint(tmp_path: Path, arch: str, size: int, **kwargs: float) -> StudentCheckpoint:
    """A zoo student with real BatchNorm statistics (not the identity defaults), saved and reloaded."""
    torch.manual_seed(0)
    model = build_model(arch, len(CLASSES), **kwargs)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size, size))
    spec = InputSpec((size, size), classes=CLASSES)
    return load_student(save_student(tmp_path / f"{arch}.pt", model.eval(), arch, dict(kwargs), spec))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": x})[0]


@pytest.mark.parametrize(
    ("arch", "size", "kwargs"),
    [
        ("cifar_resnet8", 32, {"width": 0.5}),
        ("mobilenet_v3_small", 32, {}),
        ("shufflenet_v2_x0_5", 32, {}),
        ("resnet18", 32, {}),
    ],
)
def test_zoo_students_export_with_dynamic_batch(tmp_path: Path, arch: str, size: int, kwargs: dict) -> None:
    ckpt = _checkpoint(tmp_path, arch, size, **kwargs)
    built = export_onnx(ckpt, tmp_path / "student.onnx")
    assert built.exporter == "torchscript" and built.opset == 17
    model = onnx.load(str(built.path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["images"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    for batch in (1, 7):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = ckpt.model(x).numpy()
        got = _run(built.path, x.numpy())
        assert got.shape == (batch, len(CLASSES))
        assert np.abs(got - expected).max() < 1e-4


def test_metadata_props_describe_the_input(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, "cifar_resnet8", 32, width=0.5)
    built = export_onnx(ckpt, tmp_path / "student.onnx")
    meta = read_metadata(built.path)
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert json.loads(meta["input_size"]) == [32, 32]
    assert json.loads(meta["mean"]) == pytest.approx(list(ckpt.spec.mean))
    assert json.loads(meta["std"]) == pytest.approx(list(ckpt.spec.std))
    assert len(meta["source_checkpoint_sha256"]) == 64 and meta["eikd_edge_version"] and meta["arch"] == "cifar_resnet8"


def test_dynamo_exporter_for_opset_18(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, "cifar_resnet8", 32, width=0.5)
    built = export_onnx(ckpt, tmp_path / "student.onnx", opset=18)
    assert built.exporter == "dynamo" and built.opset == 18
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert np.abs(_run(built.path, x.numpy()) - ckpt.model(x).numpy()).max() < 1e-4


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FixtureRun, object]:
    run = fresh_run(tmp_path_factory, "onnx-run")
    result = runner.invoke(app, ["export", str(run.root), "--onnx", "--threads", "1"], terminal_width=120)
    return run, result


def test_dynamo_fallback_that_raises_the_opset_is_refused_for_the_target(tmp_path: Path) -> None:
    """The dynamo exporter cannot emit opset 17 (it writes 18, IR 10): TensorRT 8.5 could not parse the file."""
    ckpt = _checkpoint(tmp_path, "cifar_resnet8", 32, width=0.5)
    limits = Parsable("jetson-orin-nano", 17, 8)
    with pytest.raises(EikdError, match=r"^the exported ONNX has opset 18 \(the dynamo exporter raised it from the "):
        export_onnx(ckpt, tmp_path / "student.onnx", opset=17, exporter="dynamo", limits=limits)
    assert not (tmp_path / "student.onnx").exists()
    built = export_onnx(ckpt, tmp_path / "student.onnx", opset=17, exporter="torchscript", limits=limits)
    assert built.opset == 17


def test_export_onnx_cli_writes_the_record_contract(onnx_run: tuple[FixtureRun, object]) -> None:
    run, result = onnx_run
    assert result.exit_code == 0, result.output
    assert "onnx" in result.output and "ok" in result.output
    record = json.loads(run.run.export_record.read_text())
    assert record["target"] == "x86-cpu" and record["created_with"]
    entry = record["artifacts"]["onnx"]
    assert entry["path"] == "student.onnx" and (run.run.export_dir / entry["path"]).is_file()
    assert entry["precision"] == "fp32" and entry["opset"] == 17 and entry["input_shape"] == ["batch", 3, 32, 32]
    assert entry["size_bytes"] > 0 and entry["build_s"] > 0 and entry["status"] == "ok" and entry["reason"] is None
    parity = entry["parity"]
    keys = {
        "agree_student",
        "agree_teacher",
        "flip_rate",
        "max_abs_dprob",
        "max_abs_dlogit",
        "n_images",
        "gate",
        "passed",
    }
    assert keys <= set(parity)
    assert parity["agree_student"] == 1.0 and parity["passed"] and parity["n_images"] == 38  # the pool's gate split
    assert parity["max_abs_dlogit"] < 1e-4 and 0.0 <= parity["agree_teacher"] <= 1.0


def test_predictors_share_preprocessing(onnx_run: tuple[FixtureRun, object]) -> None:
    run, _ = onnx_run
    ckpt = load_student(run.run.student)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    reference = TorchPredictor(ckpt.model, ckpt.spec).predict_logits(images)
    onnx_logits = OnnxPredictor(run.run.export_dir / "student.onnx", ckpt.spec, device="cpu", threads=1)
    assert np.abs(onnx_logits.predict_logits(images.numpy()) - reference).max() < 1e-4


def test_missing_run_folder_is_one_line_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path / "nope"), "--onnx"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "run folder not found" in result.output


def test_missing_student_is_exit_1(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = fresh_run(tmp_path_factory, "no-student")
    run.run.student.unlink()
    result = runner.invoke(app, ["export", str(run.root), "--onnx"])
    assert result.exit_code == 1 and "student checkpoint not found" in result.output
    assert "Traceback" not in result.output


def test_fp16_without_trt_is_a_user_error(onnx_run: tuple[FixtureRun, object]) -> None:
    run, _ = onnx_run
    result = runner.invoke(app, ["export", str(run.root), "--fp16"])
    assert result.exit_code == 1 and "--trt" in result.output


@pytest.mark.filterwarnings("ignore:Setting .keep_initializers_as_inputs:UserWarning")
def test_a_failed_artifact_is_recorded_with_its_reason(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Below the CLI's opset check: the stage records 'failed' + reason, and dependents fail without running."""
    run = fresh_run(tmp_path_factory, "failing-export")
    request = ExportRequest(onnx=True, int8=True, opset=6, exporter="torchscript", threads=1)
    result = export_run(run.root, request)
    assert [(o.name, o.status) for o in result.outcomes] == [("onnx", "failed"), ("onnx-int8", "failed")]
    record = json.loads(run.run.export_record.read_text())["artifacts"]
    assert record["onnx"]["reason"] and record["onnx-int8"]["reason"] == "needs student.onnx, which could not be built"
    assert not (run.run.export_dir / "student.onnx").exists()
    cli = runner.invoke(app, ["export", str(run.root), "--opset", "6"])
    assert cli.exit_code == 1 and "--opset must be between 11 and 21" in cli.output


def test_moved_pool_needs_images_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = fresh_run(tmp_path_factory, "moved-pool")
    selection = json.loads(run.run.selection.read_text())
    selection["pool"]["root"] = str(run.root / "gone")
    run.run.selection.write_text(json.dumps(selection))
    result = runner.invoke(app, ["export", str(run.root), "--onnx"])
    assert result.exit_code == 1 and "pass --images DIR" in result.output
    result = runner.invoke(app, ["export", str(run.root), "--onnx", "--images", str(run.pool), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(run.run.export_record.read_text())["artifacts"]["onnx"]["parity"]["n_images"] == 48
