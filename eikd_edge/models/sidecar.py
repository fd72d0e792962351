"""The sidecar file beside a model (`t.yaml`/`t.yml`/`t.json` for `t.pt`) that names its input spec, found and
read as untrusted data, apart from the spec it describes (spec.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from eikd_edge.errors import EikdError
from eikd_edge.safe_yaml import load_yaml_text

MAX_SIDECAR_BYTES = 1 << 20


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
