"""What a model expects as input: size, normalisation and class names (the contract every stage shares)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eikd_edge.errors import EikdError
from eikd_edge.safe_yaml import load_yaml_text

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIDE = 8  # smaller inputs vanish inside any student's strided stages
MAX_SIDE = 8192  # one 8192x8192 float image is 800 MB already
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 1000
MAX_SIDECAR_BYTES = 1 << 20


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
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise EikdError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        kwargs: dict[str, Any] = {}
        if "input_size" in data:
            kwargs["input_size"] = parse_input_size(data["input_size"], source)
        for key in ("mean", "std"):
            if key in data:
                kwargs[key] = _three_floats(data[key], f"{source}: {key}")
        if "std" in kwargs and not all(v > 0 for v in kwargs["std"]):
            raise EikdError(f"{source}: std must be positive (it divides every pixel), got {list(kwargs['std'])}")
        if "classes" in data:
            kwargs["classes"] = parse_classes(data["classes"], source)
        return cls(**kwargs)

    def with_classes(self, classes: Sequence[str]) -> InputSpec:
        return InputSpec(self.input_size, self.mean, self.std, tuple(classes))


def parse_input_size(value: Any, source: str = "input size") -> tuple[int, int]:
    """Accept 32, "32", "32x48", [32, 48] (H×W) and [3, 32, 48] (C×H×W, how most people write a model's input
    shape) and return (H, W); each side a whole number of pixels in bounds."""
    raw = value
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        value = [p.strip() for p in parts if p.strip()]
    elif not isinstance(value, list | tuple):
        value = [value]
    sizes = [_whole_number(v) for v in value] if len(value) in (1, 2, 3) else []
    if not sizes or any(s is None for s in sizes):
        raise EikdError(f"{source}: cannot read input size {raw!r}; use e.g. 224, 224x224 or [3, 224, 224]")
    if len(sizes) == 3:
        if sizes[0] != 3:
            raise EikdError(
                f"{source}: input size {raw!r} reads as channels x height x width with {sizes[0]} channels; "
                "eikd-edge feeds RGB images (3 channels): use [3, H, W] or H x W"
            )
        sizes = sizes[1:]
    height, width = sizes[0], sizes[-1]
    assert height is not None and width is not None
    if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE:
        raise EikdError(
            f"{source}: input size {height}x{width} is out of range; each side must be at least {MIN_SIDE} pixels "
            f"and at most {MAX_SIDE}"
        )
    return (height, width)


def _whole_number(value: Any) -> int | None:
    """An int from 32, 32.0 or "32"; None for anything else (bools, 32.5, inf, NaN, lists)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 6:
        return int(value.strip())
    return None


def parse_classes(value: Any, source: str) -> tuple[str, ...]:
    """A list of distinct class names (strings or numbers), bounded in count and length."""
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in value
    ):
        raise EikdError(f"{source}: classes must be a list of names, e.g. [cat, dog], got {_short(value)}")
    if len(value) > MAX_CLASSES:
        raise EikdError(f"{source}: more than {MAX_CLASSES} classes ({len(value)}); is this the right file?")
    names = tuple(str(v) for v in value)
    too_long = next((n for n in names if len(n) > MAX_CLASS_NAME), None)
    if too_long is not None:
        raise EikdError(f"{source}: class name {too_long[:40]!r}... is longer than {MAX_CLASS_NAME} characters")
    seen: set[str] = set()
    duplicates = [n for n in names if n in seen or seen.add(n)]  # type: ignore[func-returns-value]
    if duplicates:
        raise EikdError(f"{source}: duplicate class name(s) {sorted(set(duplicates))[:5]}; each class needs its own")
    return names


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _three_floats(value: Any, source: str) -> tuple[float, float, float]:
    if isinstance(value, str):
        value = value.split(",")
    try:
        floats = tuple(float(v) for v in value) if isinstance(value, list | tuple) and len(value) == 3 else ()
    except (TypeError, ValueError):
        floats = ()
    if len(floats) != 3:
        raise EikdError(f"{source}: expected three numbers (R,G,B), got {_short(value)}")
    if not all(math.isfinite(v) for v in floats):
        raise EikdError(f"{source}: expected three finite numbers (R,G,B), got {list(floats)}")
    return floats  # type: ignore[return-value]


def sidecar_path(model_path: Path) -> Path | None:
    """The `t.yaml`/`t.yml`/`t.json` that describes `t.pt`, if there is one."""
    for suffix in (".yaml", ".yml", ".json"):
        candidate = model_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's mapping: at most 1 MB, JSON or YAML without aliases (no expansion bombs)."""
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise EikdError(f"sidecar {path} is larger than 1 MB; a sidecar holds an input size, mean, std, classes")
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else load_yaml_text(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise EikdError(f"cannot read sidecar {path}: {exc}") from None
    if not isinstance(data, dict):
        raise EikdError(f"sidecar {path} must be a mapping with input_size, mean, std, classes")
    return data
