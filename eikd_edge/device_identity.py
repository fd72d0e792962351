"""Which GPU and board this machine is, read from libcuda and the device tree without importing torch or TensorRT.

Every Orin reports "Orin" and compute capability 8.7, so the identity also carries the SM count and, on Jetson, the
board model from /proc/device-tree/model. Export compares it with a target profile; loading an engine compares it
with the engine's build record.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

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
