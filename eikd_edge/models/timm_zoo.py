"""timm models as students and teachers (`timm:NAME`): built without downloads, fused before export.

timm is an optional extra, imported only when a `timm:` name is used, so the CLI starts without it. Models are
created with `pretrained=False` (nothing is fetched at run time); a teacher's weights come from the user's file.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from eikd_edge.errors import EikdError
from eikd_edge.models.spec import INTERPOLATIONS, MIN_CROP_PCT

CROP_MODES = {"center": "center_crop", "squash": "squash", "border": "letterbox"}  # timm's crop_mode -> resize

PREFIX = "timm:"
INSTALL_HINT = "pip install 'eikd-edge[timm]'"

# Edge-friendly students, smallest of each family. Every one exports to ONNX opset 17 with a dynamic batch,
# matches PyTorch and goes through ORT INT8 (tests/test_timm_models.py checks each; benchmarks/edge_students.py
# measures them). A model that stops exporting is listed in EXPORT_ISSUES with the reason, or dropped.
CURATED = (
    "mobilenetv4_conv_small",
    "efficientnet_lite0",
    "repvit_m0_9",
    "fastvit_t8",
    "efficientvit_b0",
    "efficientvit_m0",
    "ghostnet_100",
    "mobileone_s0",
)
# Known export problems of curated models, as measured: name -> reason shown in `eikd-edge models --source timm`.
EXPORT_ISSUES: dict[str, str] = {}


def is_timm(arch: str | None) -> bool:
    return bool(arch) and str(arch).startswith(PREFIX)


def timm_name(arch: str) -> str:
    return arch[len(PREFIX) :]


def require_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise EikdError(f"timm models need timm, which is not installed: {INSTALL_HINT}") from None
    return timm


def _known(timm: Any, name: str) -> None:
    if name in timm.list_models():
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else "; timm.list_models() lists them"
    raise EikdError(f"unknown timm model {name!r}{hint}")


def build_timm(arch: str, num_classes: int, width: float = 1.0) -> nn.Module:
    """A freshly initialised timm classifier with `num_classes` outputs (pretrained=False: no download)."""
    name = timm_name(arch)
    if width != 1.0:
        raise EikdError(f"{arch} has no width option; pick a smaller timm model instead")
    timm = require_timm()
    _known(timm, name)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    except Exception as exc:  # e.g. a model that needs arguments timm.create_model cannot default
        raise EikdError(f"timm could not build {name}: {type(exc).__name__}: {exc}") from None


def input_defaults(arch: str) -> dict[str, Any]:
    """The input spec timm trained the model with (its pretrained_cfg), as InputSpec keys: input size, mean, std,
    interpolation, and the resize policy (crop_mode center -> center_crop with its crop_pct, squash -> squash,
    border -> letterbox)."""
    timm = require_timm()
    name = timm_name(arch)
    _known(timm, name)
    cfg = timm.get_pretrained_cfg(name)
    data = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else dict(cfg or {})
    out: dict[str, Any] = {}
    size = data.get("input_size")
    if isinstance(size, list | tuple) and len(size) == 3:
        out["input_size"] = [int(size[1]), int(size[2])]
    for key in ("mean", "std"):
        value = data.get(key)
        if isinstance(value, list | tuple) and len(value) == 3:
            out[key] = [float(v) for v in value]
    if data.get("interpolation") in INTERPOLATIONS:
        out["interpolation"] = data["interpolation"]
    resize = CROP_MODES.get(str(data.get("crop_mode") or "center"))
    if resize is not None:
        out["resize"] = resize
    crop_pct = data.get("crop_pct")
    if resize != "letterbox" and isinstance(crop_pct, int | float) and MIN_CROP_PCT <= crop_pct <= 1.0:
        out["crop_pct"] = float(crop_pct)
    return out


def curated_students() -> list[str]:
    return [PREFIX + name for name in CURATED]


def export_issue(arch: str) -> str | None:
    return EXPORT_ISSUES.get(timm_name(arch)) if is_timm(arch) else None


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A re-parameterised copy (RepViT, FastViT, MobileOne branches merged into single convolutions): the same
    function with fewer, larger layers, which is what an edge runtime should get. Other models come back as is."""
    if not any(hasattr(m, "reparameterize") or hasattr(m, "fuse") for m in model.modules()):
        return model
    from timm.utils import reparameterize_model

    was_training = model.training
    fused = reparameterize_model(model.eval(), inplace=False)
    model.train(was_training)
    return fused.eval()
