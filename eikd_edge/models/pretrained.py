"""Pretrained student weights (`--student-weights`): a torchvision-format state_dict from a file, or torchvision's
named weights when they already sit in the local torch cache.

A student starts far better from weights trained on a large dataset than from random ones, but the weights come
from the user, not from us: nothing is downloaded at run time, files are read with the weights-only unpickler
(a pickled model only with --trust-pickle, as for teachers), and everything except the classifier must fit the
student exactly, so a wrong architecture or width is an error rather than a silently half-loaded network.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from eikd_edge.errors import EikdError
from eikd_edge.models import timm_zoo
from eikd_edge.models.taps import find_classifier
from eikd_edge.models.teacher import detect_format, file_sha256
from eikd_edge.models.zoo import build_model

NAMED_ALIASES = ("imagenet", "default")  # torchvision's recommended weights of the architecture
_WRAPPER_KEYS = ("state_dict", "model")  # checkpoints that hold the state_dict under a key (student.pt, others)
_SHOWN_KEYS = 3


@dataclass(frozen=True)
class StudentWeights:
    """What the student started from, as recorded in metrics.json and student.pt."""

    source: str  # the path, or arch:WEIGHTS for torchvision's named weights
    path: Path
    sha256: str
    loaded: int  # tensors copied into the student
    reinitialised: tuple[str, ...]  # the classifier's keys, left freshly initialised

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": str(self.path),
            "sha256": self.sha256,
            "loaded_tensors": self.loaded,
            "reinitialised": list(self.reinitialised),
        }


def load_student_weights(
    model: nn.Module, arch: str, num_classes: int, source: str, trust_pickle: bool = False
) -> StudentWeights:
    """Copy `source` (a file, or `imagenet`/`DEFAULT`/a torchvision weights name) into `model` in place.

    Every tensor except the classifier's must be present with the student's shape; the classifier keeps its fresh
    initialisation for the teacher's `num_classes` (the pretrained head's classes are not the teacher's).
    """
    path, label = resolve_source(arch, source)
    state = _strip_prefix(read_state_dict(path, trust_pickle))
    classifier = find_classifier(model, num_classes)
    skip = {classifier.weight_name, classifier.bias_name} - {None} if classifier else set()
    wanted = {k: v for k, v in model.state_dict().items() if k not in skip}
    given = {k: v for k, v in state.items() if k not in skip}
    _check_fits(path.name, arch, wanted, given)
    model.load_state_dict(given, strict=False)
    return StudentWeights(label, path, file_sha256(path), len(given), tuple(sorted(str(k) for k in skip)))


def build_student(
    arch: str, num_classes: int, width: float = 1.0, weights: str | None = None, trust_pickle: bool = False
) -> tuple[nn.Module, StudentWeights | None]:
    """The student for a run: freshly initialised, then filled from `weights` when the recipe names some."""
    model = build_model(arch, num_classes, **({"width": width} if width != 1.0 else {}))
    if not weights:
        return model, None
    return model, load_student_weights(model, arch, num_classes, weights, trust_pickle)


def resolve_source(arch: str, source: str) -> tuple[Path, str]:
    """The file to read and how to name it: an existing path as given, else torchvision's named weights."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_file():
            raise EikdError(f"--student-weights {source}: not a file")
        return path, str(path)
    names = _named_weights(arch)
    if names is None or source.lower() not in {*NAMED_ALIASES, *(n.lower() for n in names)}:
        hint = f", or one of torchvision's names for {arch}: {', '.join(names)}" if names else ""
        raise EikdError(f"--student-weights {source}: no such file; give a state_dict file{hint}")
    return _cached_named_weights(arch, source), f"{arch}:{_member(arch, source).name}"


def _named_weights(arch: str) -> list[str] | None:
    """torchvision's weight names for `arch` (with the aliases), or None when it has none (CIFAR, timm)."""
    if timm_zoo.is_timm(arch) or arch not in torchvision.models.list_models(module=torchvision.models):
        return None
    try:
        members = list(torchvision.models.get_model_weights(arch).__members__)
    except (KeyError, ValueError):
        return None
    return [*NAMED_ALIASES, *members] if members else None


def _member(arch: str, source: str) -> Any:
    enum = torchvision.models.get_model_weights(arch)
    if source.lower() in NAMED_ALIASES:
        return enum.DEFAULT
    return next(m for name, m in enum.__members__.items() if name.lower() == source.lower())


def _cached_named_weights(arch: str, source: str) -> Path:
    """The named weights' file in TORCH_HOME/hub/checkpoints, where torchvision's downloader puts it. Never
    downloads: a run must not depend on the network, and a machine without it gets the file placed by hand."""
    url = _member(arch, source).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise EikdError(
            f"--student-weights {source}: {arch}'s weights are not in the local torch cache ({path}); eikd-edge does "
            f"not download them: fetch {url} into that folder (or set TORCH_HOME), or give the file's path"
        )
    return path


def read_state_dict(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state_dict of tensors from a torch.save file, a checkpoint holding one, TorchScript, or (trusted only)
    a pickled nn.Module."""
    kind = detect_format(path)
    if kind == "torch.export":
        raise EikdError(f"{path.name} is a torch.export program; give the student's state_dict (torch.save)")
    if kind == "torchscript":
        obj: Any = _read(path, lambda: torch.jit.load(str(path), map_location="cpu"))
    else:
        obj = _read_pickled(path, trust_pickle)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        obj = inner if inner is not None else obj
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EikdError(f"{path.name} is not a state_dict of tensors (it holds a {type(obj).__name__})")
    bad = next((k for k, v in obj.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise EikdError(f"{path.name} holds NaN or Inf in {bad}; these weights cannot train")
    return {str(k): v for k, v in obj.items()}


def _read_pickled(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():
            raise EikdError(f"{path.name} is damaged or not a PyTorch file; give a state_dict (torch.save)") from None
        if not trust_pickle:
            raise EikdError(
                f"{path.name} is a pickled Python object, and unpickling runs code from the file; save its "
                "state_dict() instead, or re-run with --trust-pickle only if you trust its author"
            ) from None
    except Exception as exc:
        what = type(exc).__name__
        raise EikdError(f"{path.name} is not a PyTorch weights file ({what}); give a state_dict") from None
    return _read(path, lambda: torch.load(path, map_location="cpu", weights_only=False))


def _read(path: Path, load: Any) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load: TorchScript is deprecated, still read
            return load()
    except Exception as exc:
        raise EikdError(f"cannot read {path.name}: {type(exc).__name__}: {str(exc).strip()[:160]}") from None


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model saved from inside DistributedDataParallel prefixes every key with `module.`."""
    if all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _check_fits(name: str, arch: str, wanted: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
    """Strict outside the classifier: any missing, unexpected or mis-shaped tensor is an error naming a few."""
    optional = {k for k in wanted if k.endswith("num_batches_tracked")}  # absent from older checkpoints
    missing = [k for k in wanted if k not in given and k not in optional]
    unexpected = [k for k in given if k not in wanted]
    shapes = [
        f"{k} {list(given[k].shape)} vs {list(wanted[k].shape)}"
        for k in wanted
        if k in given and given[k].shape != wanted[k].shape
    ]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if keys:
            shown = ", ".join(keys[:_SHOWN_KEYS]) + (", ..." if len(keys) > _SHOWN_KEYS else "")
            problems.append(f"{len(keys)} {what} ({shown})")
    if problems:
        raise EikdError(
            f"{name} does not fit the student {arch}: {'; '.join(problems)}; give weights of the same "
            "architecture and width (only the classifier may differ)"
        )
