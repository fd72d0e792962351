"""The status of an artifact, one vocabulary for export.json, validate.json, device-result.json and the tables.

A StrEnum: each member is the very string the JSON files hold ("ok", "failed_gate", ...), so files written before
and after read the same, and a member compares equal to its string. Imports nothing heavy (`--help` reads it).
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Literal

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10: the same behaviour, str() and format() give the value

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class ArtifactStatus(StrEnum):
    OK = "ok"  # built (export) or run (validate), and within the parity gate
    FAILED_GATE = "failed_gate"  # built and run, below the top-1 agreement gate
    FAILED = "failed"  # could not be built, loaded or run
    ON_DEVICE = "on_device"  # export: a TensorRT engine that is built on its device (build_engine.sh)
    SKIPPED = "skipped"  # validate: cannot run on this machine (no TensorRT, another device's engine)


# The states of an artifact that must not ship (export exits 2 or 1, validate exits 2, report draws it hollow).
SHIPS_NOT = frozenset({ArtifactStatus.FAILED_GATE, ArtifactStatus.FAILED})

# What eikd_device.py writes for an engine into device-result.json (a standalone script: it spells the strings).
EngineStatus = Literal["ok", "failed_gate", "failed"]


def is_failure(status: object) -> bool:
    """True for a status that must not ship (failed_gate, failed); anything else (another string, None, a value of
    the wrong type in a hand-edited file) is not a failure."""
    return isinstance(status, str) and status in SHIPS_NOT


def gate_status(passed: bool) -> ArtifactStatus:
    """ok when the parity gate passed, failed_gate when not."""
    return ArtifactStatus.OK if passed else ArtifactStatus.FAILED_GATE
