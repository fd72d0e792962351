"""Image folders: scan, decode to fixed-size uint8 RGB, normalise on the device. Bad files are skipped, never fatal.

One file's decoding is image_decode.py's; the names of it imported from here before it moved are re-exported
(`import X as X`)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch

from eikd_edge.errors import EikdError
from eikd_edge.image_decode import MAX_PIXELS as MAX_PIXELS
from eikd_edge.image_decode import BadImage, Target, decode_image
from eikd_edge.image_decode import PixelBudget as PixelBudget
from eikd_edge.image_decode import resize_center_crop as resize_center_crop
from eikd_edge.models.spec import InputSpec
from eikd_edge.run import NAMES

RUN_MARKER = NAMES.recipe.name  # in a folder: maybe an eikd-edge run folder, never field images
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class DecodeReport:
    """Counts and a sample of the files that were skipped, for selection.json and the report."""

    skipped: list[SkippedFile] = field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        self.skipped.append(SkippedFile(path, reason))

    def summary(self, sample: int = 20) -> dict[str, object]:
        reasons: dict[str, int] = {}
        for item in self.skipped:
            reasons[item.reason] = reasons.get(item.reason, 0) + 1
        return {
            "count": len(self.skipped),
            "by_reason": reasons,
            "sample": [{"path": s.path, "reason": s.reason} for s in self.skipped[:sample]],
        }


def scan_images(root: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Every image under `root` (recursive, suffix case-insensitive), in a deterministic order.

    Sub-folders that are eikd-edge run folders, and the folders in `exclude` (the run being written), are not
    walked: a run kept inside its field folder must not feed its own outputs (synthetic images) back in.
    """
    root = Path(root)
    if not root.exists():
        raise EikdError(f"image folder not found: {root}")
    if not root.is_dir():
        raise EikdError(f"not a folder: {root}")
    skip = {_dir_key(Path(folder)) for folder in exclude} - {None}
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    pending = [str(root)]  # an explicit stack, not recursion: a tree may be deeper than Python's recursion limit
    while pending:
        folder = pending.pop()
        key = _dir_key(Path(folder))
        if key is None or key in seen_dirs:  # unreadable, a symlink loop, or a second link to a folder walked
            continue
        seen_dirs.add(key)
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:  # unreadable folder: what it holds cannot be used, like an unreadable file
            continue
        folders = [entry.path for entry in entries if _is_folder(entry)]
        filenames = [entry.name for entry in entries if not _is_folder(entry)]
        if folder != str(root) and (key in skip or _is_run_folder(Path(folder), filenames)):
            continue
        pending.extend(folders)
        found.extend(Path(folder) / name for name in filenames if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """A folder or a link to one (links are followed; loops are caught by the (device, inode) set)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _dir_key(folder: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _is_run_folder(folder: Path, filenames: list[str]) -> bool:
    if RUN_MARKER not in filenames:
        return False
    from eikd_edge.runfolder import is_run_folder

    return is_run_folder(folder)


def confined(root: Path, rel: str) -> Path:
    """`root / rel` for a manifest path that stays inside `root`; anything else is a hostile or damaged manifest.

    Checked on the words of the path: it must be relative and must not climb out with `..`. Links inside the
    pool are the pool owner's own (the scan follows them as well).
    """
    text = str(rel)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if (
        not text
        or "\x00" in text
        or PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or PureWindowsPath(text).drive
        or ".." in parts
    ):
        raise EikdError(
            f"a manifest path points outside its image folder {display_name(str(root))}: "
            f"{display_name(text)[:200]!r}; the run folder was edited by hand or is not trustworthy"
        )
    return Path(root) / text


def _decode_or_reason(path: Path, target: Target) -> np.ndarray | str:
    try:
        return decode_image(path, target)
    except BadImage as bad:
        return bad.reason


@dataclass(frozen=True)
class DecodedBatch:
    indices: list[int]  # positions in the path list of the images that decoded
    images: torch.Tensor  # uint8 [N, 3, H, W]


def iter_decoded(
    paths: Sequence[Path],
    target: Target,
    batch_size: int,
    report: DecodeReport,
    root: Path | None = None,
    workers: int | None = None,
) -> Iterator[DecodedBatch]:
    """Decode in parallel threads, in order, one bounded batch at a time (memory stays flat on huge pools).

    The next batch is decoded while the caller works on the current one (PIL releases the GIL), so the teacher
    is not left waiting on image decoding; at most two batches are in memory.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    starts = range(0, len(paths), batch_size)

    def submit(pool: ThreadPoolExecutor, start: int) -> list[Future[np.ndarray | str]]:
        return [pool.submit(_decode_or_reason, p, target) for p in paths[start : start + batch_size]]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = submit(pool, 0) if len(paths) else []
        for number, start in enumerate(starts):
            results = [future.result() for future in pending]
            pending = submit(pool, starts[number + 1]) if number + 1 < len(starts) else []
            indices, arrays = [], []
            for offset, result in enumerate(results):
                if isinstance(result, str):
                    report.add(_display(paths[start + offset], root), result)
                else:
                    indices.append(start + offset)
                    arrays.append(result)
            if arrays:
                stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
                yield DecodedBatch(indices, stacked)


def _display(path: Path, root: Path | None) -> str:
    text = str(path)
    if root is not None and path.is_relative_to(root):
        text = path.relative_to(root).as_posix()
    return display_name(text)


def display_name(name: str) -> str:
    """A file name safe for JSON, terminals and UTF-8 files: undecodable bytes (Linux) are shown as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def normalize(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 NCHW on any device -> float NCHW normalised with the spec's mean/std."""
    mean = torch.tensor(spec.mean, device=images.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(spec.std, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.float() - mean) / std


def load_labeled_folder(root: Path, spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """An ImageFolder (one sub-folder per class) decoded to uint8 images and label indices in the spec's classes."""
    root = Path(root)
    if not root.is_dir():
        raise EikdError(f"labeled folder not found: {root}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    unknown = [d.name for d in class_dirs if d.name not in spec.classes]
    if unknown:
        raise EikdError(
            f"{root}: sub-folder(s) {unknown[:5]} are not teacher classes {list(spec.classes)[:10]}; "
            "name each sub-folder after a class"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for class_dir in class_dirs:
        for path in scan_images(class_dir):
            paths.append(path)
            labels.append(spec.classes.index(class_dir.name))
    report = DecodeReport()
    images, kept = [], []
    for batch in iter_decoded(paths, spec, 256, report, root):
        images.append(batch.images)
        kept.extend(batch.indices)
    if not kept:
        raise EikdError(f"{root}: no readable labeled images")
    return torch.cat(images), torch.tensor([labels[i] for i in kept]), [paths[i].as_posix() for i in kept]
