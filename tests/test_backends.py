"""The backend registry and the artifact status type: one table for artifact name <-> backend <-> bench name <->
export flag, a predictor per backend that loads what export really writes, and status values that are exactly the
strings export.json and validate.json hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from run_fixture import SPEC, FixtureRun, fresh_run, torch_threads

from eikd_edge.backends import BACKENDS, backend_for, device_bound_formats
from eikd_edge.bench import BACKENDS as BENCH_BACKENDS
from eikd_edge.bench import EXPORT_HINT, BenchOptions, bench_run
from eikd_edge.checkpoint import load_student, save_student
from eikd_edge.commands import bench_cmd
from eikd_edge.export.pipeline import ExportRequest, export_run
from eikd_edge.export.record import status_for
from eikd_edge.export.targets import list_targets, load_target
from eikd_edge.export.trt_checks import refusal_status
from eikd_edge.formats import BENCH_NAMES, FORMATS, build_record_path
from eikd_edge.runfolder import EXPORT_FILES
from eikd_edge.runtime import OnnxPredictor, TensorRTPredictor, TorchPredictor
from eikd_edge.status import SHIPS_NOT, ArtifactStatus, EngineStatus, is_failure
from eikd_edge.validate import validate_run

# artifact name: (backend, bench name, export flag), as the three spellings were before the registry
TABLE = {
    "pytorch": ("torch", "torch", ""),
    "onnx": ("onnxruntime", "ort", "--onnx"),
    "onnx-int8": ("onnxruntime", "ort-int8", "--int8"),
    "trt-fp32": ("tensorrt", "trt", "--trt"),
    "trt-fp16": ("tensorrt", "trt", "--trt"),
    "trt-int8": ("tensorrt", "trt", "--trt"),
}
PREDICTOR = {"torch": TorchPredictor, "onnxruntime": OnnxPredictor, "tensorrt": TensorRTPredictor}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    """The fixture run with its FP32 ONNX model and ONNX Runtime INT8 model, exported by the project."""
    run = fresh_run(tmp_path_factory, "backends")
    with torch_threads(1):
        result = export_run(run.root, ExportRequest(onnx=True, int8=True, threads=1, qad="never"))
    assert {o.name: o.status for o in result.outcomes} == {"onnx": "ok", "onnx-int8": "ok"}
    return run


# --- one table -------------------------------------------------------------------------------------------------------


def test_the_formats_table_names_backend_bench_name_and_export_flag() -> None:
    assert {f.name: (f.backend, f.bench, f.export_flag) for f in FORMATS} == TABLE


def test_the_registry_covers_every_format_and_nothing_else() -> None:
    for fmt in FORMATS:
        assert backend_for(fmt) is BACKENDS[fmt.backend]
        assert backend_for(fmt).name == fmt.backend
    assert set(BACKENDS) == {f.backend for f in FORMATS}
    for name in list_targets():  # a target profile names a backend of the registry
        assert load_target(name).backend in BACKENDS


def test_bench_names_round_trip() -> None:
    assert BENCH_BACKENDS == BENCH_NAMES == bench_cmd.BACKENDS == ("torch", "ort", "ort-int8", "trt")
    for bench in BENCH_NAMES:
        formats = [f for f in FORMATS if f.bench == bench]
        assert len({f.backend for f in formats}) == 1, f"{bench}: one runtime per bench name"
        assert len({f.export_flag for f in formats}) == 1, f"{bench}: one export flag per bench name"
    for fmt in FORMATS:
        assert fmt in [f for f in FORMATS if f.bench == fmt.bench]
        assert EXPORT_HINT.get(fmt.bench, "") == fmt.export_flag
    assert [f.name for f in FORMATS if f.bench == "ort-int8"] == ["onnx-int8"]
    assert [f.name for f in FORMATS if f.bench == "ort"] == ["onnx"]


def test_device_bound_formats_are_the_engines_with_build_records() -> None:
    bound = device_bound_formats()
    assert [f.name for f in bound] == ["trt-fp32", "trt-fp16", "trt-int8"]
    assert BACKENDS["tensorrt"].optional and not BACKENDS["onnxruntime"].optional and not BACKENDS["torch"].optional
    assert {build_record_path(Path(f.file)).name for f in bound} <= EXPORT_FILES  # the run folder's own files


def test_bench_times_each_bench_name_on_its_own_artifact(exported: FixtureRun) -> None:
    options = BenchOptions(batches=(2,), backends=("ort-int8", "ort"), warmup=0, iters=2, teacher=False, threads=1)
    with torch_threads(1):
        result = bench_run(exported.run, options)
    assert [(r.model, r.backend, r.precision, r.status) for r in result.rows] == [
        ("onnx-int8", "ort-int8", "int8", "ok"),
        ("onnx", "ort", "fp32", "ok"),
    ]


# --- a predictor per backend, on what export really wrote ------------------------------------------------------------


@pytest.mark.parametrize("name", [f.name for f in FORMATS])
def test_each_backend_loads_the_artifact_export_wrote(
    name: str, exported: FixtureRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fmt = next(f for f in FORMATS if f.name == name)
    backend = backend_for(fmt)
    run = exported
    if backend.device_bound:
        if why := backend.unavailable():
            pytest.skip(why)
        run = fresh_run(tmp_path_factory, f"backends-{name}")
        with torch_threads(1):
            export_run(run.root, ExportRequest(onnx=True, trt_precisions=(fmt.precision,), target="x86-dgpu"))
    assert fmt.path(run.root).is_file(), f"{name} was not exported"
    images = torch.randint(
        0, 256, (5, 3, *SPEC.input_size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    with torch_threads(1):
        predictor = backend.predictor(fmt, run.root, SPEC, threads=1, device="cpu")
        logits = predictor.predict_logits(images)
        reference = backend_for(FORMATS[0]).predictor(FORMATS[0], run.root, SPEC).predict_logits(images)
    assert isinstance(predictor, PREDICTOR[fmt.backend])
    assert logits.shape == (5, len(SPEC.classes)) and logits.dtype == np.float32 and np.isfinite(logits).all()
    if fmt.precision == "fp32":
        np.testing.assert_allclose(logits, reference, atol=1e-3)  # the same student in another runtime


# --- one status type: the very strings of the JSON files --------------------------------------------------------------


def _statuses(record: dict) -> dict[str, str]:
    return {name: entry["status"] for name, entry in record["artifacts"].items()}


def test_the_status_values_are_the_strings_export_and_validate_write(
    exported: FixtureRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    exported_record = json.loads(exported.run.export_record.read_text(encoding="utf-8"))
    assert _statuses(exported_record) == {"onnx": ArtifactStatus.OK.value, "onnx-int8": ArtifactStatus.OK.value}

    run = fresh_run(tmp_path_factory, "backends-statuses")
    for fmt in FORMATS[1:3]:
        fmt.path(run.root).parent.mkdir(parents=True, exist_ok=True)
        fmt.path(run.root).write_bytes(fmt.path(exported.root).read_bytes())
    record = dict(exported_record)
    engine = {"path": "student.engine", "precision": "fp32", "backend": "tensorrt", "status": "ok"}  # cannot run here
    broken = {"path": "student.fp16.engine", "precision": "fp16", "backend": "tensorrt", "status": "failed"}
    record["artifacts"] = {**exported_record["artifacts"], "trt-fp32": engine, "trt-fp16": broken}
    run.run.export_record.write_text(json.dumps(record), encoding="utf-8")
    (run.run.export_dir / "student.engine").write_bytes(b"not an engine")
    ckpt = load_student(run.run.student)  # the student's classes rotated: every ONNX prediction now disagrees
    with torch.no_grad():
        ckpt.model.fc.weight.copy_(ckpt.model.fc.weight.roll(1, 0))
        ckpt.model.fc.bias.copy_(ckpt.model.fc.bias.roll(1, 0))
    save_student(run.run.student, ckpt.model, ckpt.arch, ckpt.arch_kwargs, ckpt.spec, extra=ckpt.extra)

    with torch_threads(1):
        result = validate_run(run.root, threads=1)
    validated = json.loads(run.run.validation.read_text(encoding="utf-8"))
    written = _statuses(validated)
    assert written == {
        "onnx": ArtifactStatus.FAILED_GATE.value,
        "onnx-int8": ArtifactStatus.FAILED_GATE.value,
        "trt-fp32": ArtifactStatus.SKIPPED.value,  # no TensorRT here, or an engine without its build record
        "trt-fp16": ArtifactStatus.FAILED.value,
    }
    assert {c.name: c.status for c in result.checks} == written
    assert validated["passed"] is False and {c.name for c in result.failed} == {"onnx", "onnx-int8", "trt-fp16"}
    merged = _statuses(json.loads(run.run.export_record.read_text(encoding="utf-8")))
    assert merged["onnx"] == merged["onnx-int8"] == "failed_gate"  # validate's verdict, merged into export.json

    seen = set(_statuses(exported_record).values()) | set(written.values())
    assert {s.value for s in ArtifactStatus} == seen | {"on_device"}  # on_device: export.json's section of that name
    assert ArtifactStatus.ON_DEVICE.value in json.loads(_on_device_record(tmp_path_factory).read_text(encoding="utf-8"))


def _on_device_record(factory: pytest.TempPathFactory) -> Path:
    """export.json of an export whose TensorRT engine is built on its device: the section named on_device."""
    run = fresh_run(factory, "backends-on-device")
    with torch_threads(1):
        result = export_run(
            run.root, ExportRequest(onnx=True, trt_precisions=("fp16",), target="jetson-orin-nano", threads=1)
        )
    assert [o.status for o in result.outcomes if o.name == "trt-fp16"] == [ArtifactStatus.ON_DEVICE]
    return run.run.export_record


def test_status_helpers() -> None:
    assert {"failed_gate", "failed"} == SHIPS_NOT
    assert [s for s in ArtifactStatus if is_failure(s)] == [ArtifactStatus.FAILED_GATE, ArtifactStatus.FAILED]
    assert not is_failure(None) and not is_failure(["failed"]) and not is_failure("reference")
    assert is_failure("failed_gate") and is_failure("failed")
    assert status_for({"passed": True}) == "ok" and status_for(None) == "ok"
    assert status_for({"passed": False}) == "failed_gate"
    assert refusal_status(None, "why") == ("failed", "why")
    assert refusal_status("another GPU", "why")[0] == "skipped"
    assert (
        json.dumps([ArtifactStatus.FAILED_GATE]) == '["failed_gate"]' and str(ArtifactStatus.ON_DEVICE) == "on_device"
    )
    assert set(get_args(EngineStatus)) <= {s.value for s in ArtifactStatus}
