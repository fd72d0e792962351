"""Target profiles: every shipped YAML validates; unknown or malformed targets are clear user errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.errors import EikdError
from eikd_edge.export.targets import list_targets, load_target, targets_dir

runner = CliRunner()
SHIPPED = {"jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx", "x86-dgpu", "x86-cpu"}


def test_every_shipped_target_loads() -> None:
    assert set(list_targets()) >= SHIPPED
    for name in list_targets():
        target = load_target(name)
        assert target.name == name and target.description and target.precisions
        assert target.batch.min <= target.batch.opt <= target.batch.max and target.opset == 17
        if target.backend == "tensorrt":
            assert target.workspace_mib
    assert load_target("jetson-orin-nano").dla_core is None and load_target("jetson-xavier-nx").dla_core == 0
    assert targets_dir().name == "targets" and targets_dir().parent.name == "resources"  # package data


def test_profiles_ship_inside_the_package_only() -> None:
    """One source of truth: the profiles live in eikd_edge/resources (installed with the wheel), not at the top."""
    import eikd_edge

    assert targets_dir().is_relative_to(Path(eikd_edge.__file__).parent)
    assert not (Path(eikd_edge.__file__).parents[1] / "export" / "targets").exists()


def test_profiles_state_the_newest_onnx_their_runtime_parses() -> None:
    for name in list_targets():
        target = load_target(name)
        assert target.opset <= target.max_opset
        if target.backend == "tensorrt":  # TensorRT 8.5 (JetPack 5): opset 17, onnx 1.12 = IR 8
            assert (target.max_opset, target.max_ir_version) == (17, 8)


def test_opset_above_the_target_parser_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path), "--onnx", "--opset", "18", "--target", "jetson-orin-nano"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "--opset 18 is above what target jetson-orin-nano parses (max_opset 17)" in result.output


def test_profile_whose_opset_exceeds_its_parser_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "box.yaml").write_text("description: x\nbackend: tensorrt\nprecisions: [fp16]\nopset: 18\n")
    monkeypatch.setenv("EIKD_TARGETS_DIR", str(tmp_path))
    with pytest.raises(EikdError, match="opset 18 is above max_opset 17"):
        load_target("box")


def test_unknown_target_is_one_line_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path), "--target", "jetson-nano-2gb"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert "unknown target 'jetson-nano-2gb'" in result.output and "jetson-orin-nano" in result.output


def test_targets_dir_override_and_strict_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "edge-box.yaml").write_text(
        "description: test box\nbackend: tensorrt\nprecisions: [fp16]\nbatch: {min: 1, opt: 2, max: 4}\n"
    )
    (tmp_path / "typo.yaml").write_text("description: x\nbackend: tensorrt\nprecisions: [fp16]\nworkspace: 512\n")
    (tmp_path / "backwards.yaml").write_text(
        "description: x\nbackend: tensorrt\nprecisions: [fp16]\nbatch: {min: 8, opt: 2, max: 4}\n"
    )
    monkeypatch.setenv("EIKD_TARGETS_DIR", str(tmp_path))
    assert load_target("edge-box").batch.max == 4
    with pytest.raises(EikdError, match="workspace"):
        load_target("typo")
    with pytest.raises(EikdError, match="min <= opt <= max"):
        load_target("backwards")
    with pytest.raises(EikdError, match="valid targets: backwards, edge-box, typo"):
        load_target("x86-cpu")
