"""Target-device profiles (package data eikd_edge/resources/targets/*.yaml): precisions, batch profile, opset and
the highest opset / IR version the target's runtime parses, workspace, DLA core. Package data, not a checkout path,
so an installed wheel finds them too."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eikd_edge.errors import EikdError

DEFAULT_TARGET = "x86-cpu"
TARGETS_ENV = "EIKD_TARGETS_DIR"
Precision = Literal["fp32", "fp16", "int8"]


class BatchProfile(BaseModel):
    """TensorRT optimization profile on the batch axis (ONNX Runtime uses `opt` as its benchmark batch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: int = Field(1, gt=0)
    opt: int = Field(8, gt=0)
    max: int = Field(32, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> BatchProfile:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs min <= opt <= max, got {self.min}/{self.opt}/{self.max}")
        return self


class DeviceMatch(BaseModel):
    """The device a TensorRT target means: engines are built in-process only on a matching one."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    compute_capability: str | None = Field(None, pattern=r"^\d+\.\d+$")
    board: str | None = Field(None, description="Substring of /proc/device-tree/model (Jetson), e.g. 'Orin Nano'")


class Target(BaseModel):
    """One deployment target. `name` is the file stem; the YAML holds every other field."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str
    backend: Literal["tensorrt", "onnxruntime"]
    precisions: tuple[Precision, ...] = Field(min_length=1)
    batch: BatchProfile = BatchProfile()
    opset: int = Field(17, ge=11)
    max_opset: int = Field(17, ge=11, description="highest ONNX opset the target's oldest supported runtime parses")
    max_ir_version: int = Field(8, ge=3, description="highest ONNX IR version that runtime reads")
    workspace_mib: int | None = Field(None, gt=0, description="TensorRT builder workspace pool")
    dla_core: int | None = Field(None, ge=0, description="Jetson DLA core for fp16/int8 engines (GPU fallback on)")
    device: DeviceMatch | None = Field(None, description="Build in-process only on this device (None: any GPU)")

    @model_validator(mode="after")
    def _opset_parsable(self) -> Target:
        if self.opset > self.max_opset:
            raise ValueError(f"opset {self.opset} is above max_opset {self.max_opset}")
        return self


def targets_dir() -> Path:
    """The profiles shipped inside the package (eikd_edge/resources/targets), or $EIKD_TARGETS_DIR."""
    override = os.environ.get(TARGETS_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files("eikd_edge") / "resources" / "targets"))


def list_targets() -> list[str]:
    folder = targets_dir()
    if not folder.is_dir():
        raise EikdError(f"target profiles folder not found: {folder} (set {TARGETS_ENV} to a folder of *.yaml)")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_target(name: str) -> Target:
    """Load and validate one profile; an unknown name lists the valid ones."""
    valid = list_targets()
    if name not in valid:
        raise EikdError(f"unknown target {name!r}; valid targets: {', '.join(valid) or 'none'} (in {targets_dir()})")
    path = targets_dir() / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EikdError(f"cannot read target {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise EikdError(f"target {path} must be a mapping")
    if "name" in data:
        raise EikdError(f"target {path}: drop the 'name' key, the file name is the target's name")
    try:
        return Target.model_validate({"name": name, **data})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise EikdError(f"target {path}: {where}: {error['msg']}") from None
