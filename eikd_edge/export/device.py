"""Whether this device is the one a target profile describes, and cache keys tied to both.

Every Orin reports "Orin" and compute capability 8.7, so the identity also carries the SM count and, on Jetson, the
board model from /proc/device-tree/model. An engine, a timing cache and a calibration cache are only valid for the
TensorRT version and device that made them: `cache_key` names that pair, and a cache whose key differs is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eikd_edge.atomic import write_json_atomic
from eikd_edge.export.targets import Target


def target_mismatch(target: Target, device: dict[str, Any] | None) -> str | None:
    """Why `device` is not the device `target` describes (None when it is). Pure: tests pass device dicts."""
    if device is None:
        return "no CUDA GPU is visible here"
    want = target.device
    if want is None:
        return None
    if want.compute_capability and str(device.get("compute_capability")) != want.compute_capability:
        return (
            f"this GPU ({device.get('gpu_name')}, compute capability {device.get('compute_capability')}) is not "
            f"{target.name}'s (compute capability {want.compute_capability})"
        )
    if want.board and want.board.lower() not in str(device.get("board") or "").lower():
        here = device.get("board") or "not a Jetson board"
        return f"this board ({here}) is not {target.name}'s ({want.board})"
    return None


def version3(version: str) -> str:
    return ".".join(str(version).split(".")[:3])


def cache_key(tensorrt_version: str, device: dict[str, Any]) -> str:
    """Same text as the on-device eikd_device.py cache-key, so a cache keyed on the device is checked alike here."""
    return "TensorRT {} | {} | sm_{} | {} SMs | {}".format(
        version3(tensorrt_version),
        device.get("gpu_name"),
        str(device.get("compute_capability")).replace(".", ""),
        device.get("sm_count"),
        device.get("board") or "no board",
    )


def key_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".key")


def usable_cache(cache: Path, key: str) -> tuple[bool, str | None]:
    """(use it?, why not): a cache is used only with a key file naming exactly this TensorRT + device."""
    if not cache.is_file():
        return False, None
    kp = key_path(cache)
    recorded = kp.read_text(encoding="utf-8", errors="replace").strip() if kp.is_file() else None
    if recorded == key:
        return True, None
    origin = f"made for {recorded}" if recorded else "of unknown origin (no key file)"
    return False, f"{cache.name} refused: {origin}, here {key}"


def write_cache_key(cache: Path, key: str) -> None:
    key_path(cache).write_text(key + "\n", encoding="utf-8")


def describe(device: dict[str, Any]) -> str:
    return json.dumps({k: device.get(k) for k in ("gpu_name", "compute_capability", "sm_count", "board")})


def save_identity(path: Path, device: dict[str, Any]) -> None:
    write_json_atomic(path, device)
