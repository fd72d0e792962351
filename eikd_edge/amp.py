"""Mixed precision for training (`train.amp`): which autocast dtype a device gets, and the loss scaler fp16 needs.

bf16 keeps fp32's exponent range and needs no loss scaling, so it is the choice wherever the GPU has it (Ampere
and later). Older GPUs (V100, T4, most Jetsons before Orin) only emulate bf16, slowly; fp16 with a gradient scaler
is their fast path. CPUs train in fp32 unless bf16 is asked for.
"""

from __future__ import annotations

import torch

from eikd_edge.errors import EikdError


def autocast_dtype(setting: str, device: torch.device, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for `setting` (auto, bf16, fp16, off) on `device`; None means fp32.

    `bf16_supported` says whether the GPU has native bf16; None asks CUDA (tests pass it to check the choice).
    """
    if setting == "off":
        return None
    if device.type != "cuda":
        if setting == "fp16":
            raise EikdError(f"train.amp=fp16 needs a CUDA GPU (training runs on {device}); use auto, bf16 or off")
        return torch.bfloat16 if setting == "bf16" else None
    native = _native_bf16(device) if bf16_supported is None else bf16_supported
    if setting == "bf16" and not native:
        raise EikdError("train.amp=bf16: this GPU has no native bf16 (it would be emulated, slowly); use auto or fp16")
    if setting == "fp16" or (setting == "auto" and not native):
        return torch.float16
    return torch.bfloat16


def _native_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its gradients underflow otherwise); a pass-through for every other precision."""
    enabled = dtype == torch.float16
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)
