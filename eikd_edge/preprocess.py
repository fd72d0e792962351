"""The resize policy of an InputSpec, applied with Pillow: how a decoded photo becomes the model's input.

A teacher only agrees with itself on images prepared the way its training images were, so the policy is part of
the spec (sidecar, timm's pretrained_cfg, student.pt, ONNX metadata) rather than a fixed choice of the decoder:

- center_crop: scale (aspect kept) until the image covers the resize box, floor(H / crop_pct) x floor(W / crop_pct),
  then cut out the centre H x W. At 224 and crop_pct 0.875 that is torchvision's Resize(256) + CenterCrop(224).
- squash: resize both sides to the resize box (the input size itself at crop_pct 1), aspect ignored, then the centre.
- letterbox: scale (aspect kept) until the whole image fits inside H x W, centred on pad_value.

Scaled sides round to the nearest pixel and crop/pad offsets round down, which is within one pixel of torchvision's
arithmetic (it truncates the long side and rounds the offset).
"""

from __future__ import annotations

import math

from PIL import Image

from eikd_edge.models.spec import LEGACY_POLICY, InputSpec

RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
UPSCALE_GUARD = 1 << 22  # pixels: above this (and above the source) a centre crop resamples only the crop window
_EPS = 1e-6  # 224 / (224 / 256) is 255.99999999999997 in floating point: the box must still be 256
_TRANSPOSED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def legacy(input_size: tuple[int, int]) -> InputSpec:
    """Shorter side to the input size, centre crop, bilinear: a plain size (thumbnails, 32-px benchmarks) means this."""
    return InputSpec(input_size, **LEGACY_POLICY)  # type: ignore[arg-type]


def resize_box(spec: InputSpec) -> tuple[int, int]:
    """(H, W) the image is resized to before the centre crop: the input size divided by crop_pct."""
    h, w = spec.input_size
    return math.floor(h / spec.crop_pct + _EPS), math.floor(w / spec.crop_pct + _EPS)


def needed_size(spec: InputSpec, width: int, height: int) -> tuple[int, int]:
    """(width, height) the policy resamples a width x height image to, before any crop or pad: a decoder may hand
    over a smaller copy of the image as long as it is at least this large (no detail is then lost)."""
    box_h, box_w = resize_box(spec)
    if spec.resize == "squash":
        return box_w, box_h
    if spec.resize == "letterbox":
        h, w = spec.input_size
        scale = min(h / height, w / width)
    else:
        scale = max(box_h / height, box_w / width)
    return max(1, math.floor(width * scale + _EPS)), max(1, math.floor(height * scale + _EPS))


def draft_request(spec: InputSpec, width: int, height: int, orientation: int = 1) -> tuple[int, int]:
    """The size to pass to Pillow's `Image.draft` for a stored width x height JPEG shown with EXIF `orientation`.

    draft picks the smallest DCT scale (1/2, 1/4, 1/8) whose image is at least this large in both directions; the
    need is computed on the image as shown and turned back to the stored orientation the decoder works in."""
    transposed = orientation in _TRANSPOSED
    shown_w, shown_h = (height, width) if transposed else (width, height)
    need_w, need_h = needed_size(spec, shown_w, shown_h)
    return (need_h, need_w) if transposed else (need_w, need_h)


def apply(image: Image.Image, spec: InputSpec) -> Image.Image:
    """An RGB image of exactly spec.input_size, prepared by the spec's policy."""
    if spec.resize == "squash":
        return _centre(image.resize(_wh(resize_box(spec)), RESAMPLING[spec.interpolation]), spec.input_size)
    if spec.resize == "letterbox":
        return _letterbox(image, spec)
    return _center_crop(image, spec)


def _wh(hw: tuple[int, int]) -> tuple[int, int]:
    return hw[1], hw[0]


def _centre(image: Image.Image, input_size: tuple[int, int]) -> Image.Image:
    target_h, target_w = input_size
    if image.size == (target_w, target_h):
        return image
    left, top = (image.width - target_w) // 2, (image.height - target_h) // 2
    return image.crop((left, top, left + target_w, top + target_h))


def _center_crop(image: Image.Image, spec: InputSpec) -> Image.Image:
    target_h, target_w = spec.input_size
    box_h, box_w = resize_box(spec)
    resample = RESAMPLING[spec.interpolation]
    scale = max(box_h / image.height, box_w / image.width)
    new_w, new_h = max(box_w, round(image.width * scale)), max(box_h, round(image.height * scale))
    if new_w * new_h > max(image.width * image.height, UPSCALE_GUARD):
        # A sliver (1x60000) would be upscaled to gigabytes before the crop: resample only the centre window.
        win_w, win_h = target_w / scale, target_h / scale
        left, top = (image.width - win_w) / 2, (image.height - win_h) / 2
        return image.resize((target_w, target_h), resample, box=(left, top, left + win_w, top + win_h))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), resample)
    return _centre(image, spec.input_size)


def _letterbox(image: Image.Image, spec: InputSpec) -> Image.Image:
    target_h, target_w = spec.input_size
    scale = min(target_h / image.height, target_w / image.width)
    new_w = min(target_w, max(1, round(image.width * scale)))
    new_h = min(target_h, max(1, round(image.height * scale)))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), RESAMPLING[spec.interpolation])
    canvas = Image.new("RGB", (target_w, target_h), spec.pad_value)
    canvas.paste(image, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def describe(spec: InputSpec) -> str:
    """One line for `inspect` and the docs: what happens to a photo before the model sees it."""
    h, w = spec.input_size
    box_h, box_w = resize_box(spec)
    size = f"{h}x{w}"
    if spec.resize == "letterbox":
        text = f"letterbox: fit inside {size}, pad {_pad(spec.pad_value)}"
    elif spec.resize == "squash":
        text = f"squash to {box_h}x{box_w}" + (f", centre crop {size}" if (box_h, box_w) != (h, w) else "")
    elif box_h == box_w or (box_h, box_w) == (h, w):
        text = f"shorter side to {min(box_h, box_w)}, centre crop {size}"
    else:
        text = f"cover {box_h}x{box_w}, centre crop {size}"
    return f"{text}, {spec.interpolation}"


def _pad(value: tuple[int, int, int]) -> str:
    return str(value[0]) if len(set(value)) == 1 else ",".join(str(v) for v in value)


def metadata(spec: InputSpec) -> dict[str, str]:
    """The policy as ONNX metadata_props (strings), so a deployment can feed the model without eikd-edge."""
    return {
        "resize": spec.resize,
        "crop_pct": f"{spec.crop_pct:.6g}",
        "resize_size": f"[{resize_box(spec)[0]}, {resize_box(spec)[1]}]",
        "interpolation": spec.interpolation,
        "pad_value": f"[{', '.join(str(v) for v in spec.pad_value)}]",
        "preprocess": describe(spec),
    }
