"""Load a teacher from any of the formats found in the field, with its input spec, checked by a dry forward."""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eikd_edge.data import normalize
from eikd_edge.errors import EikdError
from eikd_edge.models import timm_zoo
from eikd_edge.models.load_errors import describe, error_line, foreign_hint, guard, one_line, quiet
from eikd_edge.models.pt2_guard import check_pt2
from eikd_edge.models.sidecar import read_sidecar, sidecar_path
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.taps import find_classifier, widen_classifier
from eikd_edge.models.teacher_state import load_into_arch, module_from_state

GEOMETRY_KEYS = ("resize", "crop_pct", "resize_size")  # how the image is cut to size: given together or not at all
FORMATS = ("torchscript", "torch.export", "state_dict", "checkpoint", "pickle")
ACCEPTED = (
    "TorchScript, a torch.export .pt2, a state_dict with --teacher-arch, or a pickled nn.Module with --trust-pickle"
)


@dataclass(frozen=True)
class TeacherModel:
    """A teacher ready for inference. `module` returns [logits | embedding] when `embedding_dim` is set."""

    module: nn.Module
    spec: InputSpec
    format: str
    path: Path
    num_classes: int
    embedding_dim: int | None
    sha256: str
    classifier_weight: torch.Tensor | None = None  # [C, D] of the final Linear, when the teacher has one

    def forward_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable logits (for optimising inputs); the teacher's own parameters never get gradients."""
        return self.module(images)[:, : self.num_classes].float()

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and embeddings of normalised images; logits stand in where no embedding is exposed."""
        out = self.module(images).float()
        logits = out[:, : self.num_classes]
        embedding = out[:, self.num_classes :] if self.embedding_dim else logits
        return logits, embedding

    @torch.inference_mode()
    def logits_of_images(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Logits of decoded uint8 images, resized first when they are not the teacher's input size (export and
        validate grade a student whose input size may differ), in batches."""
        x = images
        if tuple(images.shape[-2:]) != tuple(self.spec.input_size):
            x = torch.nn.functional.interpolate(
                images.float(), size=self.spec.input_size, mode="bilinear", antialias=True
            )
        return torch.cat([self.predict(normalize(x[i : i + batch], self.spec))[0] for i in range(0, len(x), batch)])

    def num_parameters(self) -> int:
        """Parameters of the teacher as shipped (the identity rows of the embedding tap excluded)."""
        tap = (self.embedding_dim or 0) * ((self.embedding_dim or 0) + 1)
        return sum(p.numel() for p in self.module.parameters()) - tap

    def macs(self) -> int:
        from eikd_edge.models.zoo import count_macs

        return count_macs(self.module, self.spec.input_size) - (self.embedding_dim or 0) ** 2

    def to(self, device: torch.device) -> TeacherModel:
        return replace(self, module=self.module.to(device))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    """Tell the teacher format from the archive's contents, not from its extension."""
    if not zipfile.is_zipfile(path):
        return "legacy"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/archive_format") for n in names):
        return "torch.export"
    if any("/code/" in n for n in names):
        return "torchscript"
    return "torch.save"


def load_teacher(
    path: Path,
    arch: str | None = None,
    trust_pickle: bool = False,
    spec_overrides: dict[str, Any] | None = None,
) -> TeacherModel:
    """Load, describe and dry-run a teacher; every problem ends in an EikdError that names the fix."""
    path = Path(path)
    if not path.is_file():
        raise EikdError(f"teacher file not found: {path}")
    spec, sidecar_arch = _resolve_spec(path, spec_overrides or {}, arch)
    arch = arch or sidecar_arch
    module, fmt = _load_module(path, arch, trust_pickle, len(spec.classes) or None)
    num_classes = _dry_forward(module, spec, path)
    if fmt in ("torchscript", "torch.export") and arch:
        module = _eager_twin(module, arch, num_classes, spec, path)
    if spec.classes and len(spec.classes) != num_classes:
        raise EikdError(
            f"teacher {path.name} outputs {num_classes} classes but its spec names {len(spec.classes)}; "
            "fix the class list in the sidecar (or --classes)"
        )
    if not spec.classes:
        spec = spec.with_classes([str(i) for i in range(num_classes)])
    probe = torch.randn(2, 3, *spec.input_size, generator=torch.Generator().manual_seed(0))
    classifier = find_classifier(module, num_classes)
    weight = dict(module.named_parameters())[classifier.weight_name].detach().clone() if classifier else None
    embedding_dim = widen_classifier(module, num_classes, probe)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return TeacherModel(module, spec, fmt, path, num_classes, embedding_dim, file_sha256(path), weight)


def _eager_twin(module: nn.Module, arch: str, num_classes: int, spec: InputSpec, path: Path) -> nn.Module:
    """The same weights in the named zoo architecture, as a plain nn.Module: its BatchNorm layers can then be
    hooked (ODSD's closeness score, synthesis's prior). Trusted only if it reproduces the original's logits."""
    twin = load_into_arch(module.state_dict(), arch, num_classes, {}, path)
    probe = torch.randn(2, 3, *spec.input_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        same = torch.allclose(twin(probe), module(probe), rtol=1e-4, atol=1e-4)
    if not same:
        raise EikdError(f"{path.name} loads into --teacher-arch {arch} but computes different logits; drop the arch")
    return twin


def _resolve_spec(path: Path, overrides: dict[str, Any], arch: str | None = None) -> tuple[InputSpec, str | None]:
    """The input spec, and the architecture a sidecar may name (`arch:`) for a state_dict or TorchScript file.

    A timm architecture brings the preprocessing it was trained with (its pretrained_cfg); the sidecar, then the
    flags, override it key by key, except that the geometry (resize, crop_pct, resize_size) goes as one: a sidecar
    that names any of it replaces timm's crop, not just the key it names."""
    data: dict[str, Any] = {}
    sidecar = sidecar_path(path)
    if sidecar is not None:
        try:
            data.update(read_sidecar(sidecar))
        except EikdError as exc:  # a YAML parser error spans several lines (with ^ markers): keep it to one
            raise EikdError(
                one_line(str(exc)) + "; fix the sidecar or pass --input-size/--mean/--std/--classes"
            ) from None
    given = {k: v for k, v in overrides.items() if v is not None}
    if any(key in given for key in GEOMETRY_KEYS):
        data = {k: v for k, v in data.items() if k not in GEOMETRY_KEYS}
    data.update(given)
    named = arch or data.get("arch")
    if timm_zoo.is_timm(named):
        defaults = timm_zoo.input_defaults(str(named))
        if any(key in data for key in GEOMETRY_KEYS):
            defaults = {k: v for k, v in defaults.items() if k not in GEOMETRY_KEYS}
        data = {**defaults, **data}
    arch = data.pop("arch", None)
    return InputSpec.from_dict(data, source=str(sidecar or "teacher spec")), str(arch) if arch else None


def _load_module(path: Path, arch: str | None, trust_pickle: bool, num_classes: int | None) -> tuple[nn.Module, str]:
    kind = detect_format(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load: TorchScript is deprecated, still read
        if kind == "torchscript":
            return guard(
                lambda: torch.jit.load(str(path), map_location="cpu"), path, "TorchScript"
            ).eval(), "torchscript"
        if kind == "torch.export":
            data = path.read_bytes()  # checked and loaded from the same bytes: the file cannot change in between
            if not trust_pickle:
                check_pt2(data, path.name)
            program = guard(lambda: quiet(torch.export.load, io.BytesIO(data)), path, "torch.export")
            _require_dynamic_batch(program, path)
            return program.module(), "torch.export"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # the weights-only unpickler met bytes, not a forbidden class
            raise EikdError(
                f"{path.name} is not a model eikd-edge can read (damaged or not a PyTorch file{foreign_hint(path)}); "
                f"expected {ACCEPTED}"
            ) from None
        if not trust_pickle:
            raise EikdError(
                f"{path.name} is a pickled Python object, and unpickling runs code from the file; "
                "re-run with --trust-pickle only if you trust its author, or export it with torch.export"
            ) from None
        obj = _load_trusted_pickle(path, exc)
    except Exception as exc:
        raise EikdError(
            f"{path.name} is not a model eikd-edge can read ({type(exc).__name__}{foreign_hint(path)}); "
            f"expected {ACCEPTED}"
        ) from None
    if isinstance(obj, nn.Module):
        return obj.eval(), "pickle"
    return module_from_state(obj, path, arch, num_classes)


def _require_dynamic_batch(program: Any, path: Path) -> None:
    """A program exported with a fixed batch size refuses every other one: say so, not "wrong input size"."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" and node.name in user_inputs else None
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and isinstance(value.shape[0], int):
            raise EikdError(
                f"{path.name} was exported with a static batch axis (batch size {value.shape[0]}); eikd-edge runs "
                "the teacher on batches of any size: re-export it with a dynamic batch dimension, "
                "dynamic_shapes=({0: torch.export.Dim('batch')},)"
            )


def _load_trusted_pickle(path: Path, _original: Exception) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise EikdError(f"cannot unpickle {path.name}: {type(exc).__name__}: {exc}") from None


@torch.inference_mode()
def _dry_forward(module: nn.Module, spec: InputSpec, path: Path) -> int:
    h, w = spec.input_size
    try:
        out = module(torch.zeros(2, 3, h, w))
    except Exception as exc:
        first_line = error_line(exc)
        raise EikdError(
            f"teacher {path.name} failed a dry forward on 3x{h}x{w} inputs ({first_line[:160]}); "
            "set the right input size in the sidecar or with --input-size"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        raise EikdError(f"teacher {path.name} must return logits of shape [batch, classes]; got {describe(out)}")
    if not torch.isfinite(out).all():
        raise EikdError(f"teacher {path.name} returns NaN or Inf on a blank image; check its weights")
    single = module(torch.zeros(1, 3, h, w))  # scoring batches vary in size: the class count must not
    if not isinstance(single, torch.Tensor) or tuple(single.shape) != (1, out.shape[1]):
        raise EikdError(
            f"teacher {path.name} returns {describe(out)} for 2 images but {describe(single)} for 1: its output "
            "width depends on the batch size; it must return logits of shape (batch, classes)"
        )
    return int(out.shape[1])
