"""Which device this is, whether it is the one a target profile describes, and cache keys tied to both.

Every Orin reports "Orin" and compute capability 8.7, so the identity also carries the SM count and, on Jetson, the
board model from /proc/device-tree/model. An engine, a timing cache and a calibration cache are only valid for the
TensorRT version and device that made them: `cache_key` names that pair, and a cache whose key differs is refused.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Any

from eikd_edge.atomic import write_json_atomic
from eikd_edge.export.targets import Target

BOARD_MODEL = Path("/proc/device-tree/model")
_CC_MAJOR, _CC_MINOR, _SM_COUNT = 75, 76, 16  # CUdevice_attribute values from cuda.h


def board_model(path: Path = BOARD_MODEL) -> str | None:
    """'NVIDIA Jetson Orin Nano Developer Kit' on a Jetson; None on a PC."""
    try:
        text = path.read_bytes()[:256].decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None
    return text or None


def cuda_device_info(index: int = 0) -> dict[str, Any] | None:
    """GPU name, compute capability, SM count and CUDA driver version from libcuda (as the on-device eikd_device.py)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, major, minor, sms, version = (ctypes.c_int() for _ in range(5))
    name = ctypes.create_string_buffer(256)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
        return None
    cuda.cuDeviceGetName(name, 256, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(sms), _SM_COUNT, device)
    cuda.cuDriverGetVersion(ctypes.byref(version))
    return {
        "gpu_name": name.value.decode(errors="replace"),
        "compute_capability": f"{major.value}.{minor.value}",
        "sm_count": sms.value,
        "cuda_version": f"{version.value // 1000}.{version.value % 1000 // 10}",
    }


def identity() -> dict[str, Any] | None:
    """This machine's GPU identity plus its board, or None without a CUDA GPU."""
    info = cuda_device_info()
    return None if info is None else {**info, "board": board_model()}


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
