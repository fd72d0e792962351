"""What a model expects as input: size, normalisation and class names (the contract every stage shares)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eikd_edge.errors import EikdError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """Input contract of a classifier: RGB images resized to `input_size` (H, W), then (x/255 - mean) / std."""

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    classes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "input spec") -> InputSpec:
        known = {"input_size", "mean", "std", "classes"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EikdError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        kwargs: dict[str, Any] = {}
        if "input_size" in data:
            kwargs["input_size"] = parse_input_size(data["input_size"], source)
        for key in ("mean", "std"):
            if key in data:
                kwargs[key] = _three_floats(data[key], f"{source}: {key}")
        if "classes" in data:
            kwargs["classes"] = tuple(str(name) for name in data["classes"])
        return cls(**kwargs)

    def with_classes(self, classes: Sequence[str]) -> InputSpec:
        return InputSpec(self.input_size, self.mean, self.std, tuple(classes))


def parse_input_size(value: Any, source: str = "input size") -> tuple[int, int]:
    """Accept 32, "32", "32x48", [32, 48] and return (H, W)."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        value = [p.strip() for p in parts if p.strip()]
    if isinstance(value, list | tuple) and len(value) in (1, 2):
        try:
            sizes = [int(v) for v in value]
        except (TypeError, ValueError):
            sizes = []
        if sizes and all(s > 0 for s in sizes):
            return (sizes[0], sizes[-1])
    raise EikdError(f"{source}: cannot read input size {value!r}; use e.g. 224 or 224x224")


def _three_floats(value: Any, source: str) -> tuple[float, float, float]:
    if isinstance(value, str):
        value = value.split(",")
    try:
        floats = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        floats = ()
    if len(floats) != 3:
        raise EikdError(f"{source}: expected three numbers (R,G,B), got {value!r}")
    return floats  # type: ignore[return-value]


def sidecar_path(model_path: Path) -> Path | None:
    """The `t.yaml`/`t.yml`/`t.json` that describes `t.pt`, if there is one."""
    for suffix in (".yaml", ".yml", ".json"):
        candidate = model_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise EikdError(f"cannot read sidecar {path}: {exc}") from None
    if not isinstance(data, dict):
        raise EikdError(f"sidecar {path} must be a mapping with input_size, mean, std, classes")
    return data
