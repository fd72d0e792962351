"""The self-describing student checkpoint (student.pt) and the resumable training state.

student.pt loads with `torch.load(weights_only=True)`: plain dicts, lists, numbers, strings and tensors only.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eikd_edge import __version__
from eikd_edge.atomic import write_atomic
from eikd_edge.errors import EikdError
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.zoo import build_model

CHECKPOINT_FORMAT = "eikd-edge/student"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class StudentCheckpoint:
    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any]
    spec: InputSpec
    path: Path
    extra: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)


def save_torch_atomic(path: Path, obj: Any) -> Path:
    """torch.save through a Python file, so a full disk surfaces as its OSError (ENOSPC), not an opaque C++ error."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    return write_atomic(path, write)


def save_student(
    path: Path,
    model: nn.Module,
    arch: str,
    arch_kwargs: dict[str, Any],
    spec: InputSpec,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write student.pt atomically; `extra` carries the recipe, teacher identity and headline metrics."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": state,
        "spec": spec.to_dict(),
        "classes": list(spec.classes),
        "eikd_edge_version": __version__,
        **(extra or {}),
    }
    return save_torch_atomic(path, payload)


def _read_payload(path: Path) -> dict[str, Any]:
    """student.pt as plain data: the weights-only unpickler refuses any Python object, so no code in it runs."""
    path = Path(path)
    if not path.is_file():
        raise EikdError(f"student checkpoint not found: {path} (run `eikd-edge distill` first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise EikdError(f"cannot read student checkpoint {path}: {type(exc).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise EikdError(f"{path} is not an eikd-edge student checkpoint")
    return payload


def teacher_record(path: Path) -> tuple[str, str] | None:
    """(path, sha256) of the teacher this student was distilled from, as training recorded it; None if absent."""
    record = _read_payload(path).get("teacher")
    if not isinstance(record, dict):
        return None
    teacher_path, digest = record.get("path"), record.get("sha256")
    if not isinstance(teacher_path, str) or not isinstance(digest, str):
        return None
    return teacher_path, digest


def student_weights_record(path: Path) -> dict[str, Any] | None:
    """The pretrained weights the student started from, as its run recorded them; None if it started fresh."""
    try:
        record = _read_payload(path).get("student_weights")
    except EikdError:
        return None
    return record if isinstance(record, dict) else None


def load_student(path: Path) -> StudentCheckpoint:
    """Rebuild the student from student.pt in eval mode."""
    path = Path(path)
    payload = _read_payload(path)
    spec = InputSpec.from_record(payload["spec"], source=str(path))
    model = build_model(payload["arch"], len(spec.classes), **payload.get("arch_kwargs", {}))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    known = {"format", "format_version", "arch", "arch_kwargs", "state_dict", "spec", "classes"}
    extra = {k: v for k, v in payload.items() if k not in known}
    return StudentCheckpoint(model, payload["arch"], dict(payload.get("arch_kwargs", {})), spec, path, extra)


_TRAIN_STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "step": int,
    "net": dict,
    "optimizer": dict,
    "scheduler": dict,
    "history": list,
    "best": dict,
    "wall_s": (int, float),
    "images_seen": int,
}


def load_train_state(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """train_state.pt for --resume, checked field by field: a damaged or foreign file is a clear error."""
    advice = f"cannot resume from {path}"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # random bytes make the unpickler raise nearly anything (KeyError, IndexError, ...)
        raise EikdError(
            f"{advice}: it is damaged or not an eikd-edge training state ({type(exc).__name__}); "
            "start again without --resume (with --overwrite)"
        ) from None
    if not isinstance(state, dict):
        raise EikdError(f"{advice}: it holds a {type(state).__name__}, not an eikd-edge training state")
    wrong = [
        key
        for key, kind in _TRAIN_STATE_FIELDS.items()
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool)
    ]
    if wrong:
        raise EikdError(f"{advice}: it is not an eikd-edge training state (missing or wrong: {', '.join(wrong)})")
    return state


def diverged_message(step: int, lr: float, run: Any) -> str:
    """What to tell the user when the loss stops being a number: the likely cause and what is left on disk."""
    kept = (
        f"{run.student} keeps the last finite checkpoint"
        if Path(run.student).is_file()
        else "no checkpoint had been written yet"
    )
    return (
        f"the training loss became NaN or Inf at step {step + 1}: the learning rate is likely too high "
        f"(train.lr={lr:g}); lower train.lr (e.g. --set train.lr={lr / 10:g}) and run again; {kept}"
    )
