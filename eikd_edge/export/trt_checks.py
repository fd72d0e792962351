"""What a refused engine means for `validate`: a failure on the device it was built for, a skip anywhere else.

A record mismatch, a missing record or an engine that does not deserialize is exactly what validation must catch on
the device the engine was made for, so there it fails (exit 2). On any other machine the engine was never meant to
run, so it is skipped with the reason (and the device's own check is `eikd_device.py validate`).
"""

from __future__ import annotations

from typing import Any

from eikd_edge.device_identity import identity
from eikd_edge.errors import EikdError
from eikd_edge.export import device as dev
from eikd_edge.export.targets import load_target
from eikd_edge.status import ArtifactStatus


def refusal_status(intended_here: str | None, reason: str) -> tuple[ArtifactStatus, str]:
    """(status, reason) for a refused engine; `intended_here` is None on the target's device, else why it is not."""
    if intended_here is None:
        return ArtifactStatus.FAILED, reason
    return ArtifactStatus.SKIPPED, f"{reason} (not this engine's device: {intended_here})"


def engine_failure_status(
    target_name: Any, reason: str, device: dict[str, Any] | None = None
) -> tuple[ArtifactStatus, str]:
    """refusal_status with the engine's target profile matched against this machine (or `device`)."""
    try:
        target = load_target(str(target_name)) if target_name else None
    except EikdError:
        target = None
    if target is None:
        return refusal_status("its target profile is unknown here", reason)
    return refusal_status(dev.target_mismatch(target, device if device is not None else identity()), reason)
