"""Fuzzing the decoder: mutated bytes of real small images never raise anything but BadImage.

Seeds are real encodings (PNG in several modes, baseline/progressive/EXIF JPEG, BMP, GIF, TIFF, WEBP) made here;
hypothesis flips, inserts, deletes, overwrites and truncates bytes. When the decoder accepts a mutant it must
still return a uint8 HxWx3 array of the requested size. Deterministic (derandomised) and bounded, so it is a
normal fast test; raise EIKD_FUZZ_EXAMPLES for a longer hunt.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from eikd_edge.data import BadImage, decode_image

SIZE = (12, 16)  # (height, width): not square, so a wrong orientation of the output would show


def _pixels(width: int = 20, height: int = 14) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 12 % 256, yy * 18 % 256, (xx * yy) % 256], axis=-1).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    rgb = Image.fromarray(_pixels())
    exif = Image.Exif()
    exif[0x0112] = 6
    sixteen = Image.fromarray(_pixels()[..., 0].astype(np.uint16) * 250)
    return {
        "png": _encode(rgb, "PNG"),
        "png-rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "png-palette": _encode(rgb.convert("P"), "PNG"),
        "png-gray": _encode(rgb.convert("L"), "PNG"),
        "png-16bit": _encode(sixteen, "PNG"),
        "png-optimized": _encode(rgb, "PNG", optimize=True),
        "jpeg": _encode(rgb, "JPEG", quality=90),
        "jpeg-progressive": _encode(rgb, "JPEG", progressive=True),
        "jpeg-exif": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "bmp": _encode(rgb, "BMP"),
        "gif": _encode(rgb, "GIF"),
        "tiff": _encode(rgb, "TIFF"),
        "tiff-lzw": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "webp": _encode(rgb, "WEBP", quality=80),
        "webp-lossless": _encode(rgb, "WEBP", lossless=True),
    }


SEEDS = _seeds()
SEED_NAMES = sorted(SEEDS)
EXAMPLES = int(os.environ.get("EIKD_FUZZ_EXAMPLES", "200"))


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(SEED_NAMES))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "header"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":  # the values that break parsers: zero, all ones, sign bits
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
        else:  # overwrite inside the first 64 bytes, where sizes, depths and offsets live
            at = draw(st.integers(0, min(63, len(data) - 1)))
            chunk = draw(st.binary(min_size=1, max_size=4))
            data[at : at + len(chunk)] = chunk
    return name, bytes(data)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="eikd-fuzz-") as folder:
        yield Path(folder)


def test_every_seed_decodes(scratch: Path) -> None:
    for name, data in SEEDS.items():
        path = scratch / f"seed-{name}.img"
        path.write_bytes(data)
        array = decode_image(path, SIZE)
        assert array.dtype == np.uint8 and array.shape == (*SIZE, 3), name


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL on damaged metadata; the CLI mutes these too
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same 200 mutants every run: a failure here is reproducible, never flaky
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(case=mutated())
def test_mutated_images_only_ever_raise_bad_image(scratch: Path, case: tuple[str, bytes]) -> None:
    name, data = case
    path = scratch / f"mutant.{name.split('-')[0]}"
    path.write_bytes(data)
    try:
        array = decode_image(path, SIZE)
    except BadImage as bad:
        assert bad.reason and "\n" not in bad.reason
        return
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.uint8
    assert array.shape == (*SIZE, 3)


def test_keyboard_interrupt_is_never_swallowed(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a decode must stop the run (exit 3), not become a skipped file."""
    path = scratch / "fine.png"
    path.write_bytes(SEEDS["png"])

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        decode_image(path, SIZE)
