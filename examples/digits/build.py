"""Build the bundled `digits` example: a teacher, an unlabeled open-world field pool and a labeled val folder.

    python examples/digits/build.py [--out DIR] [--pool-size N] [--teacher-epochs E] [--seed S]

* `teacher.pt` + `teacher.yaml`: a TorchScript cifar_resnet20 trained on the train split of scikit-learn's
  handwritten digits (8x8, 17 grey levels), seen through eikd-edge's own input pipeline (8x8 PNG -> RGB ->
  bilinear 32x32 -> normalise).
* `field/`: unlabeled PNGs in the same 8x8 / 17-level format, none of them from the digits dataset: digits
  printed with matplotlib's bundled fonts (the domain shift) and at least a third of out-of-label-space
  distractors (printed letters, natural-photo patches, noise). `field_truth.csv` holds what each file is,
  for scoring only; the tool never reads it.
* `val/<class>/`: the handwritten test split, an ImageFolder.
* `manifest.json`: counts, settings and the teacher's accuracies.

Same arguments, same bytes: every random draw comes from a generator seeded by `--seed`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eikd_edge.data import DecodeReport, iter_decoded, load_labeled_folder, normalize, resize_center_crop
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import load_teacher
from eikd_edge.models.zoo import build_model

HERE = Path(__file__).resolve().parent
CLASSES = tuple(str(d) for d in range(10))
INPUT_SIZE = (32, 32)
ARCH = "cifar_resnet20"
DEFAULT_POOL_SIZE = 2400
DEFAULT_TEACHER_EPOCHS = 20
SPLIT = {"test_size": 0.5, "stratify": "target", "random_state": 0}  # fixed: val is the same for every --seed

LEVELS = 16  # sklearn digits: 4x4 blocks of a 32x32 bitmap, value = lit pixels per block, 0..16
LEVEL_TO_U8 = np.floor(np.arange(LEVELS + 1) * 255 / LEVELS + 0.5).astype(np.uint8)

# Field pool composition: uneven digit frequencies (7 clearly rare) and >= 1/3 distractors.
DISTRACTOR_FRACTION = 0.36
DIGIT_WEIGHTS = (1.0, 1.3, 1.1, 1.0, 0.9, 1.0, 1.1, 0.3, 0.9, 0.8)
DISTRACTOR_WEIGHTS = {"letter": 0.4, "photo": 0.4, "noise": 0.2}
LETTERS = "".join(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in "IlOo")
FONT_DENYLIST = ("LastResort", "STIXSiz", "STIXNonUni", "Display", "cmex", "cmsy", "cmmi")
PHOTO_SOURCES = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cell",
    "china",
    "flower",
)  # skimage's `text`, `page` and `clock` are left out: they show characters or numerals
NOISE_KINDS = ("uniform", "sparse", "smooth", "blobs")

RENDER = {
    "font_px": (32, 64),
    "stroke_px_max_fraction": 0.04,
    "rotation_deg": 20.0,
    "box_fill": (0.78, 1.0),
    "jitter_px_at_32": 2,
    "blur_radius_at_32": (0.0, 0.8),
    "noise_sigma_at_32": (0.0, 16.0),
    "binarise_probability": 0.5,
    "invert_probability": 0.15,
}
TEACHER_TRAINING = {
    "optimizer": "SGD(momentum=0.9, nesterov)",
    "lr": 0.05,
    "weight_decay": 5e-4,
    "batch_size": 64,
    "schedule": "1-epoch linear warm-up, cosine decay",
    "label_smoothing": 0.1,
    "augment": {"rotation_deg": 12.0, "scale": 0.12, "translate_px": 2.0, "gain": (0.7, 1.0), "thicken_p": 0.25},
}

console = Console()


# ----------------------------------------------------------------------------------------------- pixels


def to_png_bytes(levels: np.ndarray) -> bytes:
    """An 8x8 array of levels 0..16 as a grayscale PNG (level * 255/16, rounded)."""
    buffer = io.BytesIO()
    Image.fromarray(LEVEL_TO_U8[levels.astype(np.int64)], mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def model_pixels(levels: np.ndarray) -> np.ndarray:
    """uint8 [N, 3, 32, 32] exactly as `eikd_edge.data.decode_image` returns the saved 8x8 PNGs (channels first)."""
    out = np.empty((len(levels), 3, *INPUT_SIZE), dtype=np.uint8)
    for index, image in enumerate(levels):
        rgb = Image.fromarray(LEVEL_TO_U8[image.astype(np.int64)], mode="L").convert("RGB")
        out[index] = np.asarray(resize_center_crop(rgb, INPUT_SIZE), dtype=np.uint8).transpose(2, 0, 1)
    return out


def quantise(canvas: np.ndarray) -> np.ndarray:
    """A 32x32 grey canvas (0..255) to 8x8 levels 0..16: the mean of each 4x4 block, as sklearn's digits were made."""
    blocks = np.clip(canvas, 0, 255).reshape(8, 4, 8, 4).mean(axis=(1, 3))
    return np.clip(np.floor(blocks / 255.0 * LEVELS + 0.5), 0, LEVELS).astype(np.uint8)


# ------------------------------------------------------------------------------------------- the dataset


@cache
def load_digit_split() -> dict[str, np.ndarray]:
    """sklearn's handwritten digits (levels 0..16) and its fixed stratified 50/50 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.uint8)
    target = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(target)), test_size=SPLIT["test_size"], stratify=target, random_state=SPLIT["random_state"]
    )
    return {
        "images": images,
        "target": target,
        "train": np.sort(train_idx),
        "test": np.sort(test_idx),
    }


# ---------------------------------------------------------------------------------------------- teacher


def _augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random affine (no flips), occasional stroke thickening and a contrast gain, on 0..255 pixels."""
    cfg = TEACHER_TRAINING["augment"]
    n = batch.shape[0]

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen) * 2 - 1

    angle = uniform(n) * math.radians(cfg["rotation_deg"])
    scale = 1 + uniform(n) * cfg["scale"]
    shift = uniform(n, 2) * cfg["translate_px"] * 2 / INPUT_SIZE[0]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    thick = (torch.rand(n, generator=gen) < cfg["thicken_p"]).view(n, 1, 1, 1)
    out = torch.where(thick, 0.5 * (out + F.max_pool2d(out, 3, 1, 1)), out)
    low, high = cfg["gain"]
    gain = low + torch.rand(n, 1, 1, 1, generator=gen) * (high - low)
    return out * gain


def train_teacher(
    pixels: torch.Tensor, labels: torch.Tensor, spec: InputSpec, epochs: int, seed: int, progress: Progress
) -> torch.nn.Module:
    """cifar_resnet20 on uint8 [N, 3, 32, 32] pixels, single-threaded so the weights are the same bytes on any CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(pixels, labels, spec, epochs, seed, progress)
    finally:
        torch.set_num_threads(threads)


def _train(
    pixels: torch.Tensor, labels: torch.Tensor, spec: InputSpec, epochs: int, seed: int, progress: Progress
) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ARCH, len(CLASSES)).to(memory_format=torch.channels_last)
    cfg = TEACHER_TRAINING
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg["lr"], momentum=0.9, nesterov=True, weight_decay=cfg["weight_decay"]
    )
    batch_size = cfg["batch_size"]
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, total)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    gen = torch.Generator().manual_seed(seed)
    images = pixels.float()
    task = progress.add_task("training teacher", total=epochs)
    model.train()
    for _epoch in range(epochs):
        order = torch.randperm(len(labels), generator=gen)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = normalize(_augment(images[index], gen), spec).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(batch), labels[index], label_smoothing=cfg["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        progress.advance(task)
    return model.to(memory_format=torch.contiguous_format).eval()


_SCRIPT_AND_SAVE = """
import sys, warnings
import torch
from eikd_edge.models.zoo import build_model
arch, classes, state_path, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
model = build_model(arch, classes)
model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    torch.jit.save(torch.jit.script(model.eval()), dest)
"""


def save_teacher(model: torch.nn.Module, out: Path, spec: InputSpec) -> None:
    """TorchScript teacher + sidecar. Scripting runs in a child with PYTHONHASHSEED=0: TorchScript writes a module's
    constants in set order, which string-hash randomisation would otherwise change from run to run."""
    with tempfile.TemporaryDirectory() as scratch:
        state_path = Path(scratch) / "state.pt"
        torch.save(model.state_dict(), state_path)
        dest = Path(scratch) / "teacher.pt"
        command = [sys.executable, "-c", _SCRIPT_AND_SAVE, ARCH, str(len(spec.classes)), str(state_path), str(dest)]
        done = subprocess.run(command, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"scripting the teacher failed:\n{done.stderr[-2000:]}")
        shutil.copyfile(dest, out / "teacher.pt")
    sidecar = {
        "input_size": list(spec.input_size),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "classes": list(spec.classes),
        "arch": ARCH,  # lets eikd-edge run the TorchScript file as an eager module (BatchNorm statistics)
    }
    (out / "teacher.yaml").write_text(yaml.safe_dump(sidecar, sort_keys=False, default_flow_style=None))


def pixel_stats(pixels: np.ndarray) -> tuple[float, float]:
    values = pixels.astype(np.float64) / 255.0
    return round(float(values.mean()), 3), round(float(values.std()), 3)


# ------------------------------------------------------------------------------------------ field pool


@cache
def usable_fonts() -> tuple[Path, ...]:
    """matplotlib's bundled TTFs that draw all ten digits as distinct, real glyphs."""
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    found = []
    for path in sorted(folder.glob("*.ttf")):
        if any(bad in path.stem for bad in FONT_DENYLIST):
            continue
        try:
            font = ImageFont.truetype(str(path), 32)
        except OSError:
            continue
        missing = _glyph_bitmap(font, "\ue000")
        bitmaps = [_glyph_bitmap(font, d) for d in "0123456789"]
        real = all(b.any() and not np.array_equal(b, missing) for b in bitmaps)
        if real and len({b.tobytes() for b in bitmaps}) == len(bitmaps):
            found.append(path)
    return tuple(found)


def _glyph_bitmap(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray:
    image = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(image).text((32, 32), char, font=font, fill=255, anchor="mm")
    return np.asarray(image)


@cache
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def render_char(char: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A character printed white-on-black in a random bundled font and style, then fitted to a 32x32 box
    the way the digits dataset was normalised (the glyph fills the box, centred). Returns (canvas, font)."""
    fonts = usable_fonts()
    while True:
        path = fonts[int(rng.integers(len(fonts)))]
        size = int(rng.integers(RENDER["font_px"][0], RENDER["font_px"][1] + 1))
        stroke = int(rng.integers(0, int(size * RENDER["stroke_px_max_fraction"]) + 1))
        image = Image.new("L", (size * 3, size * 3), 0)
        ImageDraw.Draw(image).text(
            (size * 1.5, size * 1.5),
            char,
            font=_font(path, size),
            fill=255,
            anchor="mm",
            stroke_width=stroke,
            stroke_fill=255,
        )
        angle = float(rng.uniform(-RENDER["rotation_deg"], RENDER["rotation_deg"]))
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR)
        box = image.point(lambda p: 255 if p > 64 else 0).getbbox()
        if box is not None:
            break
    glyph = image.crop(box)
    fill = float(rng.uniform(*RENDER["box_fill"])) * 32
    scale = min(fill / glyph.height, fill / glyph.width)
    new_w, new_h = max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))
    glyph = glyph.resize((new_w, new_h), Image.Resampling.LANCZOS)
    jitter = RENDER["jitter_px_at_32"]
    left = int(np.clip((32 - new_w) // 2 + rng.integers(-jitter, jitter + 1), 0, 32 - new_w))
    top = int(np.clip((32 - new_h) // 2 + rng.integers(-jitter, jitter + 1), 0, 32 - new_h))
    canvas = Image.new("L", (32, 32), 0)
    canvas.paste(glyph, (left, top))
    return _degrade(canvas, rng), path.stem


def _degrade(canvas: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """Blur, sensor noise and (sometimes) binarisation, as a 32x32 float canvas."""
    radius = float(rng.uniform(*RENDER["blur_radius_at_32"]))
    if radius > 0.05:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
    pixels = np.asarray(canvas, dtype=np.float64)
    if rng.random() < RENDER["binarise_probability"]:
        pixels = np.where(pixels > rng.uniform(60, 160), 255.0, 0.0)
    sigma = float(rng.uniform(*RENDER["noise_sigma_at_32"]))
    return pixels + rng.normal(0.0, sigma, pixels.shape)


@cache
def _photo(name: str) -> np.ndarray:
    """A bundled sample photograph as a 2-D uint8 grayscale array."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        rgb = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        rgb = np.asarray(getattr(skimage.data, name)())
    if rgb.dtype != np.uint8:
        rgb = (rgb.astype(np.float64) / max(float(rgb.max()), 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(rgb[..., :3] if rgb.ndim == 3 else rgb)
    return np.asarray(image.convert("L"))


def render_photo(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    name = PHOTO_SOURCES[int(rng.integers(len(PHOTO_SOURCES)))]
    photo = _photo(name)
    height, width = photo.shape
    side = round(math.exp(rng.uniform(math.log(12), math.log(min(height, width) / 2))))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((32, 32), Image.Resampling.BOX)
    pixels = np.asarray(crop, dtype=np.float64)
    if rng.random() < 0.7:  # contrast stretch, so patches use the full range like the digits do
        low, high = np.percentile(pixels, [2, 98])
        pixels = (pixels - low) / max(high - low, 1.0) * 255
    return pixels, name


def render_noise(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    if kind == "uniform":
        return rng.uniform(0, 255, (32, 32)), kind
    if kind == "sparse":
        return np.where(rng.random((32, 32)) < rng.uniform(0.05, 0.4), 255.0, 0.0), kind
    if kind == "smooth":
        noise = Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8))
        pixels = np.asarray(noise.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 4.0)))), dtype=np.float64)
        low, high = pixels.min(), pixels.max()
        return (pixels - low) / max(high - low, 1.0) * 255, kind
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    pixels = np.zeros((32, 32))
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0, 32, 2)
        sy, sx = rng.uniform(2.0, 9.0, 2)
        pixels += rng.uniform(120, 255) * np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2)
    return pixels, kind


def allocate(total: int, weights: dict[Any, float]) -> dict[Any, int]:
    """Split `total` in proportion to `weights` (largest remainder; ties go to the earlier key)."""
    weight_sum = sum(weights.values())
    shares = {k: total * w / weight_sum for k, w in weights.items()}
    counts = {k: math.floor(s) for k, s in shares.items()}
    rest = total - sum(counts.values())
    for key in sorted(shares, key=lambda k: -(shares[k] - counts[k]))[:rest]:
        counts[key] += 1
    return counts


KIND_CODES = {"digit": 1, "letter": 2, "photo": 3, "noise": 4}


def generate_field(pool_size: int, seed: int, forbidden: set[bytes], progress: Progress | None = None) -> list[dict]:
    """The pool's items in file order: kind, label, source, inverted, levels (8x8, 0..16)."""
    distractors = min(pool_size, math.ceil(pool_size * DISTRACTOR_FRACTION))
    digit_counts = allocate(pool_size - distractors, dict(enumerate(DIGIT_WEIGHTS)))
    kind_counts = allocate(distractors, DISTRACTOR_WEIGHTS)
    plan: list[tuple[str, str]] = [("digit", str(d)) for d, n in digit_counts.items() for _ in range(n)]
    for kind, count in kind_counts.items():
        plan += [(kind, "")] * count

    task = progress.add_task("rendering field pool", total=len(plan)) if progress else None
    items = []
    for index, (kind, label) in enumerate(plan):
        rng = np.random.default_rng([seed, KIND_CODES[kind], index])
        while True:
            if kind in ("digit", "letter"):
                char = label if kind == "digit" else LETTERS[int(rng.integers(len(LETTERS)))]
                canvas, source = render_char(char, rng)
            elif kind == "photo":
                char, (canvas, source) = "", render_photo(rng)
            else:
                char, (canvas, source) = "", render_noise(rng)
            levels = quantise(canvas)
            ink = int(levels.sum())
            inverted = bool(rng.random() < RENDER["invert_probability"])
            if inverted:
                levels = (LEVELS - levels).astype(np.uint8)
            if levels.tobytes() not in forbidden and (kind in ("photo", "noise") or ink >= 2 * LEVELS):
                break
        items.append({"kind": kind, "label": char, "source": source, "inverted": inverted, "levels": levels})
        if progress is not None and task is not None:
            progress.advance(task)
    order = np.random.default_rng([seed, 99]).permutation(len(items))
    return [items[i] for i in order]


def _clear_pngs(folder: Path) -> None:
    """Remove the PNGs a previous build left (only those), so a smaller pool leaves no stale files."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*.png")):
        path.unlink()
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()


def write_field(out: Path, pool_size: int, seed: int, progress: Progress | None = None) -> list[dict]:
    """Write OUT/field/NNNNNN.png and OUT/field_truth.csv; returns the items (without pixels re-read)."""
    split = load_digit_split()
    forbidden = {image.tobytes() for image in split["images"]}
    items = generate_field(pool_size, seed, forbidden, progress)
    field = out / "field"
    _clear_pngs(field)
    field.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(len(items) - 1)))
    rows = []
    for position, item in enumerate(items):
        name = f"{position:0{width}d}.png"
        (field / name).write_bytes(to_png_bytes(item["levels"]))
        item["filename"] = name
        rows.append([name, item["kind"], item["label"], item["source"], int(item["inverted"])])
    with open(out / "field_truth.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["filename", "kind", "label", "source", "inverted"])
        writer.writerows(rows)
    return items


def write_val(out: Path) -> dict[str, int]:
    """Write the handwritten test split as OUT/val/<class>/NNNN.png (NNNN: index in sklearn's digits)."""
    split = load_digit_split()
    val = out / "val"
    _clear_pngs(val)
    counts = dict.fromkeys(CLASSES, 0)
    for index in split["test"]:
        label = CLASSES[split["target"][index]]
        folder = val / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:04d}.png").write_bytes(to_png_bytes(split["images"][index]))
        counts[label] += 1
    return counts


# ----------------------------------------------------------------------------------------------- checks


def _top1(teacher: Any, images: torch.Tensor, labels: torch.Tensor) -> float:
    correct = 0
    for start in range(0, len(labels), 256):
        logits, _ = teacher.predict(normalize(images[start : start + 256], teacher.spec))
        correct += int((logits.argmax(1) == labels[start : start + 256]).sum())
    return correct / max(1, len(labels))


def evaluate_teacher(out: Path) -> dict[str, Any]:
    """Score the saved teacher exactly as the tool will see it: load_teacher + the project's decoders."""
    teacher = load_teacher(out / "teacher.pt")
    images, labels, _paths = load_labeled_folder(out / "val", teacher.spec)
    result: dict[str, Any] = {"teacher_val_top1": round(_top1(teacher, images, labels), 4)}
    with open(out / "field_truth.csv", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["kind"] == "digit"]
    if rows:
        paths = [out / "field" / r["filename"] for r in rows]
        report = DecodeReport()
        batches = list(iter_decoded(paths, teacher.spec.input_size, 256, report))
        kept = [i for b in batches for i in b.indices]
        pixels = torch.cat([b.images for b in batches])
        truth = torch.tensor([int(rows[i]["label"]) for i in kept])
        inverted = torch.tensor([rows[i]["inverted"] == "1" for i in kept])
        result["teacher_printed_digit_top1"] = round(_top1(teacher, pixels, truth), 4)
        by_polarity = {}
        for name, mask in (("normal", ~inverted), ("inverted", inverted)):
            if mask.any():
                by_polarity[name] = round(_top1(teacher, pixels[mask], truth[mask]), 4)
        result["teacher_printed_digit_top1_by_polarity"] = by_polarity
    result["teacher_embedding_dim"] = teacher.embedding_dim
    result["teacher_sha256"] = teacher.sha256
    return result


# ------------------------------------------------------------------------------------------------ build


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(
    out: Path, pool_size: int = DEFAULT_POOL_SIZE, teacher_epochs: int = DEFAULT_TEACHER_EPOCHS, seed: int = 0
) -> dict[str, Any]:
    """Build the whole example into `out`; returns the manifest (also written as OUT/manifest.json)."""
    if pool_size < 1:
        raise ValueError("pool_size must be at least 1")
    if teacher_epochs < 1:
        raise ValueError("teacher_epochs must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(seed)
    started = time.perf_counter()
    split = load_digit_split()
    train_pixels = model_pixels(split["images"][split["train"]])
    mean, std = pixel_stats(train_pixels)
    spec = InputSpec(INPUT_SIZE, (mean,) * 3, (std,) * 3, CLASSES)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        val_counts = write_val(out)
        items = write_field(out, pool_size, seed, progress)
        model = train_teacher(
            torch.from_numpy(train_pixels),
            torch.from_numpy(split["target"][split["train"]]),
            spec,
            teacher_epochs,
            seed,
            progress,
        )
    save_teacher(model, out, spec)
    console.print("evaluating the saved teacher through eikd-edge's loaders")
    scores = evaluate_teacher(out)

    kinds = {kind: sum(1 for item in items if item["kind"] == kind) for kind in KIND_CODES}
    per_digit = {d: sum(1 for item in items if item["kind"] == "digit" and item["label"] == d) for d in CLASSES}
    noise_kinds = {k: sum(1 for item in items if item["kind"] == "noise" and item["source"] == k) for k in NOISE_KINDS}
    distractors = kinds["letter"] + kinds["photo"] + kinds["noise"]
    manifest: dict[str, Any] = {
        "example": "digits",
        "command": f"python examples/digits/build.py --pool-size {pool_size} --teacher-epochs {teacher_epochs} "
        f"--seed {seed}",
        "seed": seed,
        "pool_size": len(items),
        "distractor_fraction": round(distractors / max(1, len(items)), 4),
        "counts": {
            "printed_digits": kinds["digit"],
            "per_digit": per_digit,
            "letters": kinds["letter"],
            "photo_patches": kinds["photo"],
            "noise": kinds["noise"],
            "noise_by_kind": noise_kinds,
            "inverted": sum(1 for item in items if item["inverted"]),
        },
        "field_contains_sklearn_digits": False,
        "teacher_val_top1": scores["teacher_val_top1"],
        "teacher_printed_digit_top1": scores.get("teacher_printed_digit_top1"),
        "teacher_printed_digit_top1_by_polarity": scores.get("teacher_printed_digit_top1_by_polarity"),
        "teacher": {
            "file": "teacher.pt",
            "format": "torchscript",
            "arch": ARCH,
            "sha256": scores["teacher_sha256"],
            "embedding_dim": scores["teacher_embedding_dim"],
            "epochs": teacher_epochs,
            "train_images": len(split["train"]),
            "spec": spec.to_dict(),
            "training": TEACHER_TRAINING,
        },
        "val": {
            "folder": "val",
            "images": sum(val_counts.values()),
            "per_class": val_counts,
            "source": "sklearn.datasets.load_digits, test split",
        },
        "split": {**SPLIT, "train_images": len(split["train"]), "test_images": len(split["test"])},
        "generation": {
            "format": "8x8 grayscale PNG, 17 grey levels (level * 255/16), white ink on black unless inverted",
            "distractor_fraction_target": DISTRACTOR_FRACTION,
            "digit_weights": dict(zip(CLASSES, DIGIT_WEIGHTS, strict=True)),
            "distractor_weights": DISTRACTOR_WEIGHTS,
            "render": RENDER,
            "fonts": [p.stem for p in usable_fonts()],
            "letters": LETTERS,
            "photo_sources": list(PHOTO_SOURCES),
            "noise_kinds": list(NOISE_KINDS),
            "truth_file": "field_truth.csv (for scoring only; eikd-edge never reads it)",
        },
    }
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, so the return value equals the file
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    console.print(
        f"built {out}: {len(items)} field images ({distractors} distractors), {sum(val_counts.values())} val images, "
        f"teacher val top-1 {manifest['teacher_val_top1']:.2%}, printed-digit top-1 "
        f"{manifest['teacher_printed_digit_top1'] or 0:.2%} in {time.perf_counter() - started:.0f}s"
    )
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this script's folder)")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE, help="field images to generate")
    parser.add_argument("--teacher-epochs", type=int, default=DEFAULT_TEACHER_EPOCHS, help="teacher training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    args = parser.parse_args(argv)
    build(args.out.resolve(), args.pool_size, args.teacher_epochs, args.seed)


if __name__ == "__main__":
    main()
