"""natural-photos: which of ten bundled photographs a 32x32 patch comes from, under a field domain shift.

Every photo is cut in two: the teacher's domain is its left half (a grid of cells, some for training, the
others for val, so val patches are other positions of the same photos), the field pool comes from its right
half, seen through a shift (colour, blur, sensor noise, scale), plus ~30% distractors: patches of photos
outside the ten classes and noise. No field pixel comes from the teacher's half of a class photo.
"""

from __future__ import annotations

import math
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from benchmarks.task_common import channel_stats, crop_flip, log, save_teacher, to_u8, train_teacher, write_field
from benchmarks.task_common import write_image_folder as write_folder
from eikd_edge.models.spec import InputSpec

SIZE = 32
CLASSES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "china",
    "flower",
    "grace_hopper",
)
DISTRACTOR_PHOTOS = (
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "cell",
    "colorwheel",
    "stereo_motorcycle",
    "Minduka_Present_Blue_Pack",
)
COUNTS = {"train": 2500, "val": 1000, "field": 3000}
TEACHER_EPOCHS = 10
GRID = (4, 2)  # rows x columns of cells over the left half of each photo
VAL_CELLS = ((1, 1), (2, 0))  # the rest are the teacher's training cells
PATCH = (0.10, 0.22)  # teacher-domain patch side, as a fraction of the photo's shorter side
SHIFTED_PATCH = (0.06, 0.40)  # field patch side when the scale is shifted
MIN_STD = 10.0  # featureless patches (sky, black border) say nothing of their photo: skipped
FIELD_MIX = {"in-class": 0.70, "distractor": 0.22, "noise": 0.08}
SHIFT_P = {"colour": 0.6, "blur": 0.4, "noise": 0.4, "scale": 0.5}


@cache
def photo(name: str) -> np.ndarray:
    """A bundled photograph as uint8 HxWx3."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        rgb = load_sample_image(f"{name}.jpg")
    elif name in ("grace_hopper", "Minduka_Present_Blue_Pack"):
        import matplotlib.cbook

        suffix = "jpg" if name == "grace_hopper" else "png"
        with matplotlib.cbook.get_sample_data(f"{name}.{suffix}") as handle, Image.open(handle) as image:
            rgb = np.asarray(image.convert("RGB"))
    else:
        import skimage.data

        rgb = getattr(skimage.data, name)()
        rgb = rgb[0] if isinstance(rgb, tuple) else rgb
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb[..., :3].astype(np.uint8))


def _cell_box(name: str, cell: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a grid cell of the photo's left half."""
    height, width = photo(name).shape[:2]
    rows, cols = GRID
    cell_h, cell_w = height // rows, (width // 2) // cols
    return cell[0] * cell_h, cell[1] * cell_w, cell_h, cell_w


def _crop(image: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    patch = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(patch.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float64)


def _textured(pixels: np.ndarray) -> bool:
    return float(pixels.mean(axis=2).std()) >= MIN_STD


def sample_patch(
    name: str, region: tuple[int, int, int, int], fraction: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A textured square patch inside region (top, left, height, width); returns pixels and (top, left, side)."""
    image = photo(name)
    top0, left0, height, width = region
    short = min(image.shape[:2])
    for _ in range(200):
        side = round(short * math.exp(rng.uniform(math.log(fraction[0]), math.log(fraction[1]))))
        side = max(8, min(side, height, width))
        top = top0 + int(rng.integers(0, height - side + 1))
        left = left0 + int(rng.integers(0, width - side + 1))
        pixels = _crop(image, top, left, side)
        if _textured(pixels):
            return pixels, (top, left, side)
    return pixels, (top, left, side)


def teacher_patches(cells: list[tuple[int, int]], count: int, seed: int, part: int) -> tuple[np.ndarray, list[str]]:
    """`count` class-balanced patches from the given cells of each class photo's left half."""
    images, labels = [], []
    for index in range(count):
        label = CLASSES[index % len(CLASSES)]
        rng = np.random.default_rng([seed, part, index])
        cell = cells[int(rng.integers(len(cells)))]
        pixels, _ = sample_patch(label, _cell_box(label, cell), PATCH, rng)
        images.append(to_u8(pixels))
        labels.append(label)
    return np.stack(images), labels


# --------------------------------------------------------------------------------------------- field pool


def _shift_colour(pixels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    kind = ("channels", "hue", "tint", "gamma")[int(rng.integers(4))]
    if kind == "channels":
        order = [(1, 2, 0), (2, 0, 1), (2, 1, 0), (0, 2, 1), (1, 0, 2)][int(rng.integers(5))]
        return pixels[..., list(order)], kind
    if kind == "hue":  # rotate the chroma plane of YIQ
        angle = rng.uniform(math.pi / 3, 5 * math.pi / 3)
        to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        rot = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]])
        return pixels @ (np.linalg.inv(to_yiq) @ rot @ to_yiq).T, kind
    if kind == "tint":  # washed-out colour under a strong cast
        grey = pixels.mean(axis=2, keepdims=True)
        cast = rng.uniform(0.5, 1.5, 3)
        return (0.3 * pixels + 0.7 * grey) * cast, kind
    gamma = math.exp(rng.uniform(-0.9, 0.9))
    return 255.0 * (np.clip(pixels, 0, 255) / 255.0) ** gamma * rng.uniform(0.6, 1.2), kind


def _shifted_patch(label: str, rng: np.random.Generator) -> dict[str, Any]:
    """A patch of the photo's right half seen through one or more shifts."""
    image = photo(label)
    height, width = image.shape[:2]
    region = (0, width // 2, height, width - width // 2)
    shifts = [k for k, p in SHIFT_P.items() if rng.random() < p] or [list(SHIFT_P)[int(rng.integers(len(SHIFT_P)))]]
    pixels, (top, left, side) = sample_patch(label, region, SHIFTED_PATCH if "scale" in shifts else PATCH, rng)
    names = ["scale"] if "scale" in shifts else []
    if "colour" in shifts:
        pixels, kind = _shift_colour(pixels, rng)
        names.append(f"colour:{kind}")
    if "blur" in shifts:
        radius = float(rng.uniform(0.8, 1.8))
        pixels = np.asarray(Image.fromarray(to_u8(pixels)).filter(ImageFilter.GaussianBlur(radius)), np.float64)
        names.append("blur")
    if "noise" in shifts:
        pixels = pixels + rng.normal(0.0, rng.uniform(10, 30), pixels.shape)
        names.append("noise")
    return {"pixels": to_u8(pixels), "kind": "in-class", "label": label, "source": label,
            "box": f"{top},{left},{side}", "shift": "+".join(names)}  # fmt: skip


def _distractor(rng: np.random.Generator) -> dict[str, Any]:
    name = DISTRACTOR_PHOTOS[int(rng.integers(len(DISTRACTOR_PHOTOS)))]
    image = photo(name)
    height, width = image.shape[:2]
    pixels, (top, left, side) = sample_patch(name, (0, 0, height, width), SHIFTED_PATCH, rng)
    return {"pixels": to_u8(pixels), "kind": "distractor", "label": "", "source": name,
            "box": f"{top},{left},{side}", "shift": ""}  # fmt: skip


def _noise(rng: np.random.Generator) -> dict[str, Any]:
    kind = ("uniform", "smooth", "blobs")[int(rng.integers(3))]
    if kind == "uniform":
        pixels = rng.uniform(0, 255, (SIZE, SIZE, 3))
    elif kind == "smooth":
        raw = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        pixels = np.asarray(raw.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 4.0)))), np.float64)
        pixels = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1.0) * 255
    else:
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
        pixels = np.zeros((SIZE, SIZE, 3))
        for _ in range(int(rng.integers(1, 5))):
            cy, cx = rng.uniform(0, SIZE, 2)
            sy, sx = rng.uniform(2.0, 9.0, 2)
            pixels += rng.uniform(60, 255, 3) * np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2)[..., None]
    return {"pixels": to_u8(pixels), "kind": "noise", "label": "", "source": kind, "box": "", "shift": ""}


def field_items(count: int, seed: int) -> list[dict[str, Any]]:
    in_class = round(count * FIELD_MIX["in-class"])
    noise = round(count * FIELD_MIX["noise"])
    items = []
    for index in range(count):
        rng = np.random.default_rng([seed, 3, index])
        if index < in_class:
            items.append(_shifted_patch(CLASSES[index % len(CLASSES)], rng))
        elif index < in_class + noise:
            items.append(_noise(rng))
        else:
            items.append(_distractor(rng))
    order = np.random.default_rng([seed, 99]).permutation(len(items))
    return [items[i] for i in order]


# --------------------------------------------------------------------------------------------------- build


def build(out: Path, scale: float = 1.0, teacher_epochs: int = TEACHER_EPOCHS, seed: int = 0) -> dict[str, Any]:
    """Write the task into `out`; returns the manifest facts of this builder (counts and settings)."""
    counts = {k: max(len(CLASSES), round(v * scale)) for k, v in COUNTS.items()}
    started = time.perf_counter()
    cells = [(r, c) for r in range(GRID[0]) for c in range(GRID[1])]
    train_cells = [c for c in cells if c not in VAL_CELLS]
    train_images, train_labels = teacher_patches(train_cells, counts["train"], seed, part=1)
    val_images, val_labels = teacher_patches(list(VAL_CELLS), counts["val"], seed, part=2)
    write_folder(out / "train", train_images, train_labels)
    val_counts = write_folder(out / "val", val_images, val_labels)
    kinds = write_field(out, field_items(counts["field"], seed))
    log(f"  natural-photos: {counts['train']} train / {counts['val']} val patches, field {kinds} "
        f"({time.perf_counter() - started:.0f}s)")  # fmt: skip
    chw = train_images.transpose(0, 3, 1, 2)
    mean, std = channel_stats(chw)
    spec = InputSpec((SIZE, SIZE), mean, std, CLASSES)
    labels = torch.tensor([CLASSES.index(label) for label in train_labels])
    model = train_teacher(torch.from_numpy(chw.copy()), labels, spec, teacher_epochs, seed, crop_flip(4, True))
    save_teacher(model, out, spec)
    return {
        "classes": list(CLASSES),
        "counts": {"train": counts["train"], "val": val_counts, "field": kinds},
        "teacher_epochs": teacher_epochs,
        "flip": True,
        "generation": {
            "grid": GRID,
            "val_cells": VAL_CELLS,
            "patch": PATCH,
            "shifted_patch": SHIFTED_PATCH,
            "min_std": MIN_STD,
            "field_mix": FIELD_MIX,
            "shift_p": SHIFT_P,
            "distractor_photos": list(DISTRACTOR_PHOTOS),
        },
    }
