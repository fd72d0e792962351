"""Reading one untrusted image file, apart from walking folders and batching (data.py): opened without blocking
and only if it is a regular file, refused before decoding when its header declares a decompression bomb, decoded
within a pixel budget shared by the decode threads, EXIF orientation applied, converted to RGB, resized by the
spec's policy (preprocess.py). Every way a file can be unusable ends in `BadImage(reason)`."""

from __future__ import annotations

import errno
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from eikd_edge import preprocess
from eikd_edge.models.spec import InputSpec

Target = tuple[int, int] | InputSpec  # a spec brings its resize policy; a plain (H, W) means preprocess.legacy

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
