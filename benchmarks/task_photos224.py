"""photos224: the natural-photos task at ImageNet-style sizes, as camera JPEGs, with a torchvision teacher.

Which of ten bundled photographs (scikit-image, scikit-learn, matplotlib) a camera frame shows. Every image is
a region of a photo cut at the frame's aspect ratio and written as a JPEG of a camera size (640x480, 480x640,
1280x720, ...), some with an EXIF orientation (the pixels stored turned, the tag saying how to turn them back),
so the tool's decoder, EXIF handling and resize policy are all exercised. The teacher's domain is the left half
of each photo (a 2x2 grid of cells: three train the teacher, the fourth is val); the field pool comes from the
right halves under a camera shift (exposure, white balance, blur, sensor noise, JPEG quality, zoom) plus ~30%
distractors (frames of other photos), in nested camera/day folders. A resnet18 teacher (torchvision) is trained
on the train frames and saved as a state_dict with a sidecar (ImageNet mean/std, resize 256/224-style centre
crop). A stand-in "pretrained" student is trained on a different task (ten other photos) and saved in
torchvision's state_dict format, to start students as ImageNet weights would (`--student-weights FILE`).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, ImageEnhance, ImageFilter

from benchmarks.task_common import TRUTH_FIELDS, crop_flip, log, to_u8, train_teacher
from benchmarks.task_photos import CLASSES, DISTRACTOR_PHOTOS, photo
from eikd_edge.data import load_labeled_folder
from eikd_edge.models.spec import InputSpec

TEACHER_ARCH = "resnet18"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAIN_PHOTOS = DISTRACTOR_PHOTOS  # the stand-in "ImageNet": ten photos that are none of the classes
FIELD_DISTRACTORS = ("text", "page", "clock", "logo", *DISTRACTOR_PHOTOS)
FRAMES = ((640, 480), (480, 640), (1280, 720), (720, 1280), (1024, 768), (800, 800))
COUNTS = {"train": 500, "val": 300, "field": 1000, "pretrain": 500}
EPOCHS = {"teacher": 8, "pretrain": 8}
GRID, VAL_CELL = (2, 2), (1, 1)  # cells of each class photo's left half; VAL_CELL is val, the rest train
CROP = (0.35, 0.75)  # crop height as a share of the photo's shorter side (teacher domain)
ZOOM = (0.25, 0.95)  # the field's crop height when the zoom is shifted
EXIF_SHARE, FIELD_IN_CLASS = 0.25, 0.70
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
MIN_STD = 10.0  # a featureless frame (sky, black border) says nothing of its photo


# ------------------------------------------------------------------------------------------------ frames


def frame_size(rng: np.random.Generator) -> tuple[int, int]:
    return FRAMES[int(rng.integers(len(FRAMES)))]


def cut_frame(
    name: str,
    region: tuple[int, int, int, int],
    centre_in: tuple[int, int, int, int],
    frame: tuple[int, int],
    crop: tuple[float, float],
    rng: np.random.Generator,
) -> Image.Image:
    """A frame-shaped crop of `name` centred inside `centre_in`, kept inside `region` (top, left, h, w), resized
    to the frame; featureless crops are drawn again (200 tries)."""
    image = photo(name)
    aspect = frame[0] / frame[1]
    top0, left0, height, width = region
    for _ in range(200):
        crop_h = min(image.shape[0], image.shape[1]) * math.exp(rng.uniform(*np.log(crop)))
        crop_h = min(crop_h, height, width / aspect)
        crop_w = crop_h * aspect
        cy = centre_in[0] + rng.uniform(0, centre_in[2])
        cx = centre_in[1] + rng.uniform(0, centre_in[3])
        top = int(np.clip(cy - crop_h / 2, top0, top0 + height - crop_h))
        left = int(np.clip(cx - crop_w / 2, left0, left0 + width - crop_w))
        pixels = image[top : top + max(8, round(crop_h)), left : left + max(8, round(crop_w))]
        if float(pixels.mean(axis=2).std()) >= MIN_STD:
            break
    return Image.fromarray(np.ascontiguousarray(pixels)).resize(frame, Image.Resampling.BICUBIC)


def left_cell(name: str, cell: tuple[int, int]) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(the left half, one grid cell of it) of a class photo, as (top, left, height, width)."""
    height, width = photo(name).shape[:2]
    half = width // 2
    cell_h, cell_w = height // GRID[0], half // GRID[1]
    return (0, 0, height, half), (cell[0] * cell_h, cell[1] * cell_w, cell_h, cell_w)


def camera_shift(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Exposure, white balance and saturation always a little off; blur and sensor noise on some frames."""
    names = []
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.5, 1.5))
    gains = rng.uniform(0.8, 1.2, 3)
    pixels = np.asarray(image, np.float64) * gains
    if rng.random() < 0.4:
        image = Image.fromarray(to_u8(pixels)).filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 4.0))))
        pixels, names = np.asarray(image, np.float64), [*names, "blur"]
    if rng.random() < 0.4:
        pixels, names = pixels + rng.normal(0.0, rng.uniform(5, 20), pixels.shape), [*names, "noise"]
    return Image.fromarray(to_u8(pixels)), "+".join(["exposure", *names])


def save_jpeg(image: Image.Image, path: Path, rng: np.random.Generator, quality: tuple[int, int] = (85, 95)) -> int:
    """A camera JPEG; on EXIF_SHARE of them the pixels are stored turned and the orientation tag says how to
    turn them back (what phones do). Returns the orientation written (1 = none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    orientation = int(rng.choice(list(STORED))) if rng.random() < EXIF_SHARE else 1
    exif = Image.Exif()
    if orientation != 1:
        image = image.transpose(STORED[orientation])
        exif[0x0112] = orientation
    image.save(path, format="JPEG", quality=int(rng.integers(*quality)), exif=exif.tobytes())
    return orientation


# ----------------------------------------------------------------------------------------------- folders


def labeled_folder(root: Path, classes: tuple[str, ...], count: int, seed: int, part: int) -> None:
    """root/<class>/IMG_NNNNN.jpg, class-balanced: val frames centred in VAL_CELL of the left half, train frames
    in the other cells (part 1), pre-training frames anywhere in another photo (part 3)."""
    cells = [(r, c) for r in range(GRID[0]) for c in range(GRID[1]) if (r, c) != VAL_CELL]
    for index in range(count):
        label = classes[index % len(classes)]
        rng = np.random.default_rng([seed, part, index])
        if part == 3:
            height, width = photo(label).shape[:2]
            region = centre = (0, 0, height, width)
        else:
            region, centre = left_cell(label, VAL_CELL if part == 2 else cells[int(rng.integers(len(cells)))])
        image = cut_frame(label, region, centre, frame_size(rng), CROP, rng)
        save_jpeg(image, root / label / f"IMG_{index:05d}.jpg", rng)


def field_item(index: int, in_class: bool, seed: int) -> tuple[Image.Image, dict[str, Any], np.random.Generator]:
    """One field frame and its truth row: a class photo's right half under a camera shift, or a distractor."""
    rng = np.random.default_rng([seed, 4, index])
    frame = frame_size(rng)
    if not in_class:
        name = FIELD_DISTRACTORS[int(rng.integers(len(FIELD_DISTRACTORS)))]
        height, width = photo(name).shape[:2]
        box = (0, 0, height, width)
        image, shift = camera_shift(cut_frame(name, box, box, frame, ZOOM, rng), rng)
        return image, {"kind": "distractor", "label": "", "source": name, "shift": shift}, rng
    label = CLASSES[index % len(CLASSES)]
    height, width = photo(label).shape[:2]
    box = (0, width // 2, height, width - width // 2)
    zoomed = rng.random() < 0.5
    image, shift = camera_shift(cut_frame(label, box, box, frame, ZOOM if zoomed else CROP, rng), rng)
    shift = f"zoom+{shift}" if zoomed else shift
    return image, {"kind": "in-class", "label": label, "source": label, "shift": shift}, rng


def field_folder(root: Path, count: int, seed: int) -> dict[str, int]:
    """root/field/camK/dayD/IMG_NNNNN.jpg in a shuffled order, and root/field_truth.csv (scoring only)."""
    in_class = round(count * FIELD_IN_CLASS)
    order = np.random.default_rng([seed, 99]).permutation(count)
    rows = []
    for position, index in enumerate(order):
        image, row, rng = field_item(int(index), int(index) < in_class, seed)
        name = f"cam{position % 3}/day{position % 2}/IMG_{position:05d}.jpg"
        orientation = save_jpeg(image, root / "field" / name, rng, quality=(60, 95))
        rows.append({"path": name, **row, "frame": "x".join(map(str, image.size)), "exif": orientation})
    with open(root / "field_truth.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*TRUTH_FIELDS, "shift", "frame", "exif"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return {kind: sum(1 for r in rows if r["kind"] == kind) for kind in ("in-class", "distractor")}


# ------------------------------------------------------------------------------------------------ models


def spec_for(size: int, classes: tuple[str, ...]) -> InputSpec:
    return InputSpec.from_dict(sidecar(size, classes), source="photos224")


def sidecar(size: int, classes: tuple[str, ...]) -> dict[str, Any]:
    """How the teacher was fed: ImageNet mean/std, shorter side to size/0.875, centre crop (torchvision's way)."""
    geometry = {"resize": "center_crop", "crop_pct": 0.875, "interpolation": "bilinear"}
    return {"input_size": [size, size], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "classes": list(classes), **geometry}  # fmt: skip


def fit_on_folder(folder: Path, spec: InputSpec, arch: str, epochs: int, seed: int) -> torch.nn.Module:
    """`arch` trained on a labeled folder decoded exactly as the tool decodes (EXIF, resize policy)."""
    images, labels, _ = load_labeled_folder(folder, spec)
    pad = max(2, spec.input_size[0] // 16)
    return train_teacher(images, labels, spec, epochs, seed, crop_flip(pad, True), arch=arch)


def build(
    out: Path, size: int, students: list[str], scale: float = 1.0, epochs: dict[str, int] | None = None, seed: int = 0
) -> dict[str, Any]:
    """Write the task into `out` (teacher.pt + teacher.yaml, train/, val/, field/, field_truth.csv, pretrain/,
    pretrained-<arch>.pt per student); returns the manifest facts."""
    epochs = {**EPOCHS, **(epochs or {})}
    counts = {k: max(2 * len(CLASSES), round(v * scale)) for k, v in COUNTS.items()}
    started = time.perf_counter()
    labeled_folder(out / "train", CLASSES, counts["train"], seed, part=1)
    labeled_folder(out / "val", CLASSES, counts["val"], seed, part=2)
    labeled_folder(out / "pretrain", PRETRAIN_PHOTOS, counts["pretrain"], seed, part=3)
    kinds = field_folder(out, counts["field"], seed)
    timings = {"images_s": round(time.perf_counter() - started, 1)}
    log(f"  photos224: {counts} JPEGs written, field {kinds} ({timings['images_s']:.0f}s)")
    teacher = fit_on_folder(out / "train", spec_for(size, CLASSES), TEACHER_ARCH, epochs["teacher"], seed)
    torch.save(teacher.state_dict(), out / "teacher.pt")
    meta = {**sidecar(size, CLASSES), "arch": TEACHER_ARCH}
    (out / "teacher.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, default_flow_style=None))
    timings["teacher_s"] = round(time.perf_counter() - started - timings["images_s"], 1)
    for arch in students:
        begun = time.perf_counter()
        model = fit_on_folder(out / "pretrain", spec_for(size, PRETRAIN_PHOTOS), arch, epochs["pretrain"], seed)
        torch.save(model.state_dict(), out / f"pretrained-{arch}.pt")
        timings[f"pretrain_{arch}_s"] = round(time.perf_counter() - begun, 1)
    return {"classes": list(CLASSES), "size": size, "counts": {**counts, "field": kinds}, "epochs": epochs,
            "pretrain_photos": list(PRETRAIN_PHOTOS), "field_distractors": list(FIELD_DISTRACTORS),
            "frames": [list(f) for f in FRAMES], "timings": timings}  # fmt: skip
