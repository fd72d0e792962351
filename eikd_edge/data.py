"""Image folders: scan, decode to fixed-size uint8 RGB, normalise on the device. Bad files are skipped, never fatal."""

from __future__ import annotations

import errno
import os
import stat
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from eikd_edge import preprocess
from eikd_edge.errors import EikdError
from eikd_edge.models.spec import InputSpec
from eikd_edge.run import NAMES

Target = tuple[int, int] | InputSpec  # a spec brings its resize policy; a plain (H, W) means preprocess.legacy

RUN_MARKER = NAMES.recipe.name  # in a folder: maybe an eikd-edge run folder, never field images
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
MAX_PIXELS = 64_000_000  # larger declared sizes are treated as decompression bombs
TOO_LARGE = "too large (decompression bomb?)"
# A lossless WebP of 34 bytes can declare 8000x8000 pixels: real photos and scans stay far below 2,000 pixels per
# byte of file (a flat-colour PNG, deflate's best case, is about 350), so denser files are refused undecoded.
MAX_PIXELS_PER_BYTE = 2_000
DENSE_MIN_PIXELS = 4_000_000  # small images may compress as they like: decoding them costs little
TOO_DENSE = "too large for its file size (decompression bomb?)"
MAX_DECODING_PIXELS = 128_000_000  # across decode threads at once: about 0.5 GB of RGBA, however many workers
# What the decoder will open, whatever the file's name says: the formats of IMAGE_SUFFIXES plus GIF (often misnamed).
# Anything else (EPS runs Ghostscript, PSD, ...) is "not an image": hostile pools do not reach exotic decoders.
DECODE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF")

# Our own MAX_PIXELS check replaces PIL's warning for headers between its limit and twice it (where PIL raises),
# and PIL's warnings about damaged metadata ("Corrupt EXIF data", "Tag data larger than file") would only litter
# the terminal: the file is decoded or skipped with a reason either way.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


class BadImage(Exception):
    """A file in the pool that cannot be used; `reason` is short and goes into the reports."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


class PixelBudget:
    """Bounds the pixels being decoded at once across decode threads: each image waits until its pixels fit.

    An image larger than the whole budget still runs, alone, so nothing waits forever.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + pixels <= self.capacity)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


DECODE_BUDGET = PixelBudget(MAX_DECODING_PIXELS)


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


def decode_image(path: Path, target: Target) -> np.ndarray:
    """Decode to an HxWx3 uint8 array: EXIF orientation applied, then the spec's resize policy (preprocess.py).

    Every way a file can be unusable ends in `BadImage(reason)`; nothing else escapes except KeyboardInterrupt
    and the like (BaseException), which must still stop the run.
    """
    spec = target if isinstance(target, InputSpec) else preprocess.legacy(target)
    input_size = spec.input_size
    handle = _open_regular_file(path)
    try:
        with handle, Image.open(handle, formats=DECODE_FORMATS) as image:
            # Opening read only the header: the size checks come before any pixel is decoded.
            pixels = image.width * image.height
            if pixels > MAX_PIXELS:
                raise BadImage(TOO_LARGE)
            if pixels > DENSE_MIN_PIXELS and pixels > MAX_PIXELS_PER_BYTE * os.fstat(handle.fileno()).st_size:
                raise BadImage(TOO_DENSE)
            if image.format == "JPEG":  # decode big JPEGs at 1/2..1/8 scale in the DCT: faster, far less memory
                image.draft(None, preprocess.draft_request(spec, image.width, image.height, _orientation(image)))
            with DECODE_BUDGET.hold(image.width * image.height):
                image.load()
                image = _exif_transpose(image)
                rgb = _to_rgb(image)
                array = np.asarray(preprocess.apply(rgb, spec), dtype=np.uint8)
    except BadImage:
        raise
    except Image.DecompressionBombError:  # PIL's own limit, hit while opening headers far above ours
        raise BadImage(TOO_LARGE) from None
    except Image.UnidentifiedImageError:  # empty, text, or a format we do not decode (EPS, PSD, ...)
        raise BadImage("not an image") from None
    except MemoryError:
        raise BadImage(TOO_LARGE) from None
    except Exception as exc:  # decoders raise anything on hostile bytes (struct.error, IndexError, ...): skip it
        raise BadImage(f"corrupt ({type(exc).__name__})") from None
    if array.shape != (*input_size, 3):  # defensive: a decoder that lied about its size
        raise BadImage("corrupt (wrong size)")
    return array


def _open_regular_file(path: Path) -> BinaryIO:
    """Open for reading without ever blocking (a FIFO named x.jpg) and only if it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise BadImage("broken symlink" if os.path.islink(path) else "vanished") from None
    except PermissionError:
        raise BadImage("unreadable (permission denied)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadImage("unreadable (symlink loop)") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV):  # a socket, a folder, a device
            raise BadImage("unreadable (not a regular file)") from None
        raise BadImage(f"unreadable ({errno.errorcode.get(exc.errno or 0, type(exc).__name__)})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadImage("unreadable (not a regular file)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (read with the header, before any pixel); 1 (as stored) when absent or damaged."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF: exif_transpose will leave the pixels as stored too
        return 1
    return value if isinstance(value, int) else 1


def _exif_transpose(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block leaves the pixels as stored rather than losing them."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF raises struct.error, KeyError, SyntaxError, ...
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16-bit, 32-bit int and float: full range
        array = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(array.max()) if array.size else 0.0
        scaled = np.clip(array * (255.0 / peak) if peak > 0 else array, 0.0, 255.0)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, input_size: tuple[int, int]) -> Image.Image:
    """Shorter side to the input size, centre crop, bilinear (the policy a plain size means)."""
    return preprocess.apply(image, preprocess.legacy(input_size))


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
