"""Import device-result.json (written by eikd_device.py validate on the device) into the run.

The file comes back from another machine, so it is read as untrusted: size-capped, JSON only (NaN and Infinity
refused), every field type-checked and range-checked, and it must name the parity set this run exported (the sha256
of parity.reference.npy), else the figures would describe another student. The engines' parity and latency land in
export.json (device_results) and validate.json (device), where `report` shows them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eikd_edge.atomic import write_json_atomic
from eikd_edge.errors import EikdError
from eikd_edge.export.record import merge_record
from eikd_edge.formats import PARITY_JSON
from eikd_edge.run import RunPaths
from eikd_edge.status import ArtifactStatus, EngineStatus

MAX_BYTES = 1 << 20
RESULT_FORMAT = "eikd-edge/device-result"
Text = Annotated[str, Field(max_length=300)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Positive = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class DeviceInfo(_Strict):
    tensorrt_version: Text
    gpu_name: Text | None = None
    compute_capability: Text | None = None
    sm_count: Annotated[int, Field(ge=0, le=100000)] | None = None
    board: Text | None = None
    cuda_version: Text | None = None


class ParityFigures(_Strict):
    agree_student: Fraction
    flip_rate: Fraction
    max_abs_dprob: Positive | None
    max_abs_dlogit: Positive | None
    n_images: Annotated[int, Field(ge=1, le=10_000_000)]
    non_finite: Annotated[int, Field(ge=0)]
    gate: Fraction
    passed: bool


class Latency(_Strict):
    batch: Annotated[int, Field(ge=1, le=100000)]
    iters: Annotated[int, Field(ge=1)]
    p50_ms: Positive
    p90_ms: Positive
    p99_ms: Positive
    mean_ms: Positive
    std_ms: Positive
    images_per_s: Positive | None


class EngineResult(_Strict):
    name: Literal["trt-fp32", "trt-fp16", "trt-int8"]
    engine: Text
    status: EngineStatus  # ok | failed_gate | failed
    reason: Annotated[str, Field(max_length=2000)] | None
    record: dict[str, Any] | None = None
    parity: ParityFigures | None = None
    latency: Annotated[list[Latency], Field(max_length=16)] = []


class ParitySet(_Strict):
    n: Annotated[int, Field(ge=1)]
    source: Text | None = None
    reference_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class DeviceResult(_Strict):
    format: Literal["eikd-edge/device-result"]
    version: Literal[1]
    device: DeviceInfo
    parity_set: ParitySet
    gate: Fraction
    engines: Annotated[dict[str, EngineResult], Field(min_length=1, max_length=3)]
    passed: bool


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def read_device_result(path: Path) -> DeviceResult:
    """Parse and check a device-result.json; any problem is one EikdError naming the file."""
    if not path.is_file():
        raise EikdError(f"device result not found: {path}")
    if path.stat().st_size > MAX_BYTES:
        raise EikdError(f"{path} is larger than {MAX_BYTES >> 10} KiB: not a device result")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EikdError(f"{path} is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    try:
        result = DeviceResult.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "top level"
        raise EikdError(f"{path} is not an eikd-edge device result: {where}: {error['msg']}") from None
    for key, engine in result.engines.items():
        if key != engine.name:
            raise EikdError(f"{path}: engines.{key} names {engine.name}")
        if engine.status != ArtifactStatus.FAILED and engine.parity is None:
            raise EikdError(f"{path}: {key} is {engine.status} but has no parity figures")
    return result


def import_device_result(run: RunPaths, path: Path) -> DeviceResult:
    """Check the result against this run's exported parity set, then merge it into export.json and validate.json."""
    result = read_device_result(path)
    parity_meta = run.export_dir / PARITY_JSON
    if not parity_meta.is_file():
        raise EikdError(f"{run.export_dir} has no {PARITY_JSON}: export with --trt for the device first")
    try:
        expected = json.loads(parity_meta.read_text(encoding="utf-8")).get("reference_sha256")
    except (OSError, ValueError, AttributeError):
        raise EikdError(f"cannot read {parity_meta}; export again") from None
    if result.parity_set.reference_sha256 != expected:
        raise EikdError(
            f"{path} was measured on another parity set than this run's export (re-exported since?): copy the "
            "current export folder to the device and validate there again"
        )
    entries = {name: _entry(engine, result) for name, engine in result.engines.items()}
    merge_record(run, top={"device_results": entries})
    summary_path = run.validation
    summary: dict[str, Any] = {}
    if summary_path.is_file():
        try:
            loaded = json.loads(summary_path.read_text(encoding="utf-8"))
            summary = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            summary = {}
    summary["device"] = {"info": result.device.model_dump(), "gate": result.gate, "engines": entries}
    write_json_atomic(summary_path, summary)
    return result


def _entry(engine: EngineResult, result: DeviceResult) -> dict[str, Any]:
    return {
        "status": engine.status,
        "reason": engine.reason,
        "engine": engine.engine,
        "parity": engine.parity.model_dump() if engine.parity else None,
        "latency": [lat.model_dump() for lat in engine.latency],
        "device": result.device.model_dump(),
    }
