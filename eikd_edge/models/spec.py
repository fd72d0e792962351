"""What a model expects as input: size, normalisation and class names (the contract every stage shares)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from eikd_edge.errors import EikdError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIDE = 8  # smaller inputs vanish inside any student's strided stages
MAX_SIDE = 8192  # one 8192x8192 float image is 800 MB already
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 1000
# How an image is brought to the input size (docs in eikd_edge/preprocess.py): cover the resize box and cut out the
# centre, resize both sides (distorting), or fit inside and pad.
RESIZE_POLICIES = ("center_crop", "squash", "letterbox")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
SMALL_INPUT = 64  # at or below (CIFAR-style inputs) the whole image is used: crop_pct 1.0
DEFAULT_CROP_PCT = 0.875  # torchvision/timm's ImageNet evaluation: resize 256, centre crop 224
MIN_CROP_PCT = 0.25
AUTO_CROP = 0.0  # crop_pct not given: the convention for the input size
# What a record (student.pt) without policy keys was made with: the only policy there was before they existed.
LEGACY_POLICY = {"resize": "center_crop", "crop_pct": 1.0, "interpolation": "bilinear"}
POLICY_KEYS = ("resize", "crop_pct", "resize_size", "interpolation", "pad_value")


@dataclass(frozen=True)
class InputSpec:
    """Input contract of a classifier: RGB images brought to `input_size` (H, W) by the resize policy, then
    (x/255 - mean) / std.

    The policy says how the teacher was fed, so that the pool is seen as it saw its training images: `resize`
    (center_crop, squash or letterbox), `crop_pct` (the input's share of the resize box: 0.875 means resize 256 and
    crop 224), `interpolation`, and the letterbox `pad_value`. An unset crop_pct follows the torchvision/timm
    convention above 64 px (0.875, centre crop) and keeps the whole image at or below it (1.0).
    """

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    classes: tuple[str, ...] = field(default_factory=tuple)
    resize: str = "center_crop"
    crop_pct: float = AUTO_CROP
    interpolation: str = "bilinear"
    pad_value: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        if self.crop_pct == AUTO_CROP:
            object.__setattr__(self, "crop_pct", default_crop_pct(self.input_size, self.resize))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["classes"] = list(self.classes)
        data["pad_value"] = list(self.pad_value)
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any], source: str = "input spec") -> InputSpec:
        """A spec written by eikd-edge (student.pt): one without policy keys predates them and was made with the
        only policy there was then, whatever its size."""
        if isinstance(data, dict) and not any(key in data for key in POLICY_KEYS):
            data = {**data, **LEGACY_POLICY}
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "input spec") -> InputSpec:
        known = {"input_size", "mean", "std", "classes", *POLICY_KEYS}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise EikdError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        kwargs: dict[str, Any] = {}
        if "input_size" in data:
            kwargs["input_size"] = parse_input_size(data["input_size"], source)
        for key in ("mean", "std"):
            if key in data:
                kwargs[key] = _three_floats(data[key], f"{source}: {key}")
        if "std" in kwargs and not all(v > 0 for v in kwargs["std"]):
            raise EikdError(f"{source}: std must be positive (it divides every pixel), got {list(kwargs['std'])}")
        if "classes" in data:
            kwargs["classes"] = parse_classes(data["classes"], source)
        kwargs.update(parse_policy(data, kwargs.get("input_size", cls.input_size), source))
        return cls(**kwargs)

    def with_classes(self, classes: Sequence[str]) -> InputSpec:
        return replace(self, classes=tuple(classes))


def parse_input_size(value: Any, source: str = "input size") -> tuple[int, int]:
    """Accept 32, "32", "32x48", [32, 48] (H×W) and [3, 32, 48] (C×H×W, how most people write a model's input
    shape) and return (H, W); each side a whole number of pixels in bounds."""
    raw = value
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        value = [p.strip() for p in parts if p.strip()]
    elif not isinstance(value, list | tuple):
        value = [value]
    sizes = [_whole_number(v) for v in value] if len(value) in (1, 2, 3) else []
    if not sizes or any(s is None for s in sizes):
        raise EikdError(f"{source}: cannot read input size {raw!r}; use e.g. 224, 224x224 or [3, 224, 224]")
    if len(sizes) == 3:
        if sizes[0] != 3:
            raise EikdError(
                f"{source}: input size {raw!r} reads as channels x height x width with {sizes[0]} channels; "
                "eikd-edge feeds RGB images (3 channels): use [3, H, W] or H x W"
            )
        sizes = sizes[1:]
    height, width = sizes[0], sizes[-1]
    assert height is not None and width is not None
    if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE:
        raise EikdError(
            f"{source}: input size {height}x{width} is out of range; each side must be at least {MIN_SIDE} pixels "
            f"and at most {MAX_SIDE}"
        )
    return (height, width)


def _whole_number(value: Any) -> int | None:
    """An int from 32, 32.0 or "32"; None for anything else (bools, 32.5, inf, NaN, lists)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 6:
        return int(value.strip())
    return None


def parse_classes(value: Any, source: str) -> tuple[str, ...]:
    """A list of distinct class names (strings or numbers), bounded in count and length."""
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in value
    ):
        raise EikdError(f"{source}: classes must be a list of names, e.g. [cat, dog], got {_short(value)}")
    if len(value) > MAX_CLASSES:
        raise EikdError(f"{source}: more than {MAX_CLASSES} classes ({len(value)}); is this the right file?")
    names = tuple(str(v) for v in value)
    too_long = next((n for n in names if len(n) > MAX_CLASS_NAME), None)
    if too_long is not None:
        raise EikdError(f"{source}: class name {too_long[:40]!r}... is longer than {MAX_CLASS_NAME} characters")
    seen: set[str] = set()
    duplicates = [n for n in names if n in seen or seen.add(n)]  # type: ignore[func-returns-value]
    if duplicates:
        raise EikdError(f"{source}: duplicate class name(s) {sorted(set(duplicates))[:5]}; each class needs its own")
    return names


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _three_floats(value: Any, source: str) -> tuple[float, float, float]:
    if isinstance(value, str):
        value = value.split(",")
    try:
        floats = tuple(float(v) for v in value) if isinstance(value, list | tuple) and len(value) == 3 else ()
    except (TypeError, ValueError):
        floats = ()
    if len(floats) != 3:
        raise EikdError(f"{source}: expected three numbers (R,G,B), got {_short(value)}")
    if not all(math.isfinite(v) for v in floats):
        raise EikdError(f"{source}: expected three finite numbers (R,G,B), got {list(floats)}")
    return floats  # type: ignore[return-value]


def default_crop_pct(input_size: tuple[int, int], resize: str = "center_crop") -> float:
    """0.875 (resize 256, crop 224) for a centre crop above 64 px; the whole image for small inputs and the rest."""
    return DEFAULT_CROP_PCT if resize == "center_crop" and max(input_size) > SMALL_INPUT else 1.0


def parse_policy(data: dict[str, Any], input_size: tuple[int, int], source: str) -> dict[str, Any]:
    """The resize-policy keys of a sidecar or record, checked; `resize_size` (the shorter side of the resize box,
    e.g. 256) is turned into the crop_pct it means for this input size."""
    out: dict[str, Any] = {}
    if "resize" in data:
        out["resize"] = _one_of(data["resize"], RESIZE_POLICIES, f"{source}: resize")
    if "interpolation" in data:
        out["interpolation"] = _one_of(data["interpolation"], INTERPOLATIONS, f"{source}: interpolation")
    if "crop_pct" in data and "resize_size" in data:
        raise EikdError(f"{source}: give crop_pct or resize_size, not both (resize_size 256 at 224 is crop_pct 0.875)")
    if "crop_pct" in data:
        out["crop_pct"] = _crop_pct(data["crop_pct"], source)
    if "resize_size" in data:
        out["crop_pct"] = _crop_from_resize(data["resize_size"], input_size, source)
    if "pad_value" in data:
        out["pad_value"] = _pad_value(data["pad_value"], source)
    if out.get("resize") == "letterbox" and out.get("crop_pct", 1.0) != 1.0:
        raise EikdError(f"{source}: letterbox keeps the whole image; crop_pct/resize_size apply to center_crop, squash")
    return out


def parse_resize_flag(text: str) -> dict[str, Any]:
    """`--resize`: comma-separated parts in any order, each a policy (center_crop, squash, letterbox), an
    interpolation (bilinear, bicubic, nearest), a crop fraction (0.875) or a resize size (256)."""
    out: dict[str, Any] = {}
    for part in (p.strip().lower() for p in str(text).split(",")):
        key = (
            "resize"
            if part in RESIZE_POLICIES
            else "interpolation"
            if part in INTERPOLATIONS
            else "resize_size"
            if part.isdigit()
            else "crop_pct"
            if _is_fraction(part)
            else None
        )
        size_given = key in ("crop_pct", "resize_size") and ("crop_pct" in out or "resize_size" in out)
        if key is None or key in out or size_given:
            raise EikdError(
                f"--resize: cannot read {text!r}; use parts like center_crop, squash or letterbox, bilinear, bicubic "
                "or nearest, a crop fraction (0.875) or a resize size (256), e.g. --resize 256,bicubic"
            )
        out[key] = int(part) if key == "resize_size" else float(part) if key == "crop_pct" else part
    return out


def _is_fraction(text: str) -> bool:
    try:
        return "." in text and math.isfinite(float(text))
    except ValueError:
        return False


def _one_of(value: Any, choices: tuple[str, ...], source: str) -> str:
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in choices:
        raise EikdError(f"{source}: expected one of {', '.join(choices)}, got {_short(value)}")
    return text


def _crop_pct(value: Any, source: str) -> float:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or not MIN_CROP_PCT <= number <= 1.0:
        raise EikdError(
            f"{source}: crop_pct must be a fraction between {MIN_CROP_PCT} and 1 (0.875: resize 256, crop 224), "
            f"got {_short(value)}"
        )
    return float(number)


def _crop_from_resize(value: Any, input_size: tuple[int, int], source: str) -> float:
    shorter = min(input_size)
    size = _whole_number(value)
    if size is None or not shorter <= size <= shorter / MIN_CROP_PCT:
        raise EikdError(
            f"{source}: resize_size is the shorter side the image is resized to before the crop, a whole number "
            f"from {shorter} (the input size) to {int(shorter / MIN_CROP_PCT)}, got {_short(value)}"
        )
    return shorter / size


def _pad_value(value: Any, source: str) -> tuple[int, int, int]:
    values = [value] * 3 if not isinstance(value, list | tuple) else list(value)
    numbers = [_whole_number(v) for v in values] if len(values) == 3 else []
    if len(numbers) != 3 or any(n is None or not 0 <= n <= 255 for n in numbers):
        raise EikdError(f"{source}: pad_value must be a grey level 0-255 or three of them (R,G,B), got {_short(value)}")
    return tuple(numbers)  # type: ignore[return-value]
