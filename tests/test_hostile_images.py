"""A hostile pool, generated here (no committed binaries): every bad file is skipped with a reason, never a crash.

Each case is one builder that writes a file (or a FIFO, socket, link...) and the outcome it must have: decoded
(`None`) or skipped with exactly this reason string, as it appears in selection.json's pool.skipped.by_reason.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.data import MAX_PIXELS, BadImage, DecodeReport, decode_image, display_name, iter_decoded, scan_images

runner = CliRunner()
SIZE = (32, 32)
RED, BLUE = (255, 0, 0), (0, 0, 255)
TOO_LARGE = "too large (decompression bomb?)"
NOT_REGULAR = "unreadable (not a regular file)"
LINUX = sys.platform.startswith("linux")


# ----------------------------------------------------------------------------- builders


def _encoded(fmt: str, size: tuple[int, int] = (48, 40), mode: str = "RGB", **save: object) -> bytes:
    """A small real image with structure (a gradient plus noise), encoded in memory."""
    rng = np.random.default_rng(len(fmt) + size[0])
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([xx * 255 // max(1, size[0] - 1), yy * 255 // max(1, size[1] - 1), (xx + yy) % 256], axis=-1)
    pixels = (pixels + rng.integers(0, 30, pixels.shape)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height over a tiny real payload: a decompression bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    payload = zlib.compress(b"\0" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", payload) + _png_chunk(b"IEND", b"")


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _save(image: Image.Image, fmt: str | None = None, **save: object) -> Callable[[Path], None]:
    return lambda path: image.save(path, fmt, **save)


def _exif_rotated(path: Path) -> None:
    # Stored 40 wide x 20 tall, red left / blue right; orientation 6 displays it 20x40 with red on top.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20], pixels[:, 20:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, "JPEG", exif=exif.tobytes(), quality=95)


def _sixteen_bit(path: Path) -> None:
    Image.fromarray(np.tile(np.linspace(0, 60000, 40).astype(np.uint16), (30, 1))).save(path, "PNG")


def _palette(path: Path) -> None:
    image = Image.new("P", (20, 20))
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.paste(1, (10, 0, 20, 20))
    image.save(path, "PNG")


def _rgba(path: Path) -> None:
    pixels = np.zeros((20, 20, 4), dtype=np.uint8)
    pixels[:, :10] = (255, 0, 0, 255)
    pixels[:, 10:] = (0, 255, 0, 0)
    Image.fromarray(pixels, mode="RGBA").save(path, "PNG")


def _huge(path: Path) -> None:
    """A real 6000x4000 camera-sized JPEG (smooth content, so it stays small and quick to write)."""
    row = np.linspace(0, 255, 6000, dtype=np.float32)
    col = np.linspace(0, 255, 4000, dtype=np.float32)[:, None]
    pixels = np.empty((4000, 6000, 3), dtype=np.uint8)
    pixels[..., 0] = row
    pixels[..., 1] = col
    pixels[..., 2] = 128
    Image.fromarray(pixels).save(path, "JPEG", quality=70)


def _fifo(path: Path) -> None:
    os.mkfifo(path)  # opening it for reading the usual way would block forever


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(path.parent)  # AF_UNIX paths are limited to ~108 bytes: bind by the short relative name
    try:
        sock.bind(path.name)
    finally:
        os.chdir(cwd)
        sock.close()  # the socket file stays on disk


def _symlink_loop(path: Path) -> None:
    other = path.with_name(path.stem + "_partner.jpg")
    os.symlink(other.name, path)
    os.symlink(path.name, other)


def _dangling(path: Path) -> None:
    os.symlink("no-such-target.png", path)


def _eps(path: Path) -> None:
    # An EPS named .jpg: PIL would hand it to Ghostscript; the decoder does not open such formats at all.
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")


GOOD_JPEG = _encoded("JPEG")
GOOD_PNG = _encoded("PNG")

# name -> (builder, expected skip reason or None when it must decode)
assert 6000 * 4000 < MAX_PIXELS < 9000 * 9000  # the huge real image decodes, the 9000x9000 claim is refused
CASES: dict[str, tuple[Callable[[Path], None], str | None]] = {
    "truncated.jpg": (_write(GOOD_JPEG[: len(GOOD_JPEG) // 2]), "corrupt (OSError)"),
    "truncated.png": (_write(GOOD_PNG[: len(GOOD_PNG) // 2]), "corrupt (OSError)"),
    "cut_after_header.png": (_write(GOOD_PNG[:33]), "not an image"),  # signature + IHDR, no IDAT: PIL refuses it
    "cut_inside_header.png": (_write(GOOD_PNG[:20]), "corrupt (OSError)"),  # IHDR itself cut short
    "zero_bytes.jpg": (_write(b""), "not an image"),
    "zero_bytes.png": (_write(b""), "not an image"),
    "text_named.jpg": (_write(b"Lorem ipsum, this is a text file with a .jpg name\n" * 20), "not an image"),
    "html_named.png": (_write(b"<!doctype html><html><body>404 Not Found</body></html>"), "not an image"),
    "eps_named.jpg": (_eps, "not an image"),
    "bomb_100000x100000.png": (_write(png_claiming(100_000, 100_000)), TOO_LARGE),
    "bomb_9000x9000.png": (_write(png_claiming(9_000, 9_000)), TOO_LARGE),  # between our limit and PIL's
    "fifo.jpg": (_fifo, NOT_REGULAR),
    "socket.png": (_socket, NOT_REGULAR),
    "loop.jpg": (_symlink_loop, "unreadable (symlink loop)"),  # and loop_partner.jpg, the other half
    "dangling.png": (_dangling, "broken symlink"),
    "sixteen_bit.png": (_sixteen_bit, None),
    "cmyk.jpg": (_save(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), "JPEG", quality=95), None),
    "palette.png": (_palette, None),
    "rgba.png": (_rgba, None),
    "grayscale.png": (_save(Image.new("L", (20, 20), 90), "PNG"), None),
    "grayscale.jpg": (_save(Image.new("L", (20, 20), 90), "JPEG"), None),
    "exif_rotated.jpg": (_exif_rotated, None),
    "huge_6000x4000.jpg": (_huge, None),
    "one_by_one.png": (_save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), None),
    "sliver_1x20000.png": (_save(Image.new("RGB", (1, 20000), (10, 200, 10)), "PNG"), None),
    "gif_named.png": (_write(_encoded("GIF")), None),
    "real.webp": (_write(_encoded("WEBP")), None),
    "real.tiff": (_write(_encoded("TIFF")), None),
    "real.bmp": (_write(_encoded("BMP")), None),
}
EXTRA_SKIPS = {"loop_partner.jpg": "unreadable (symlink loop)"}  # files some builders add beside their own
if LINUX:  # bytes file names that are not UTF-8: only Linux file systems hold them
    NON_UTF8_GOOD = os.fsdecode(b"caf\xe9_\xff_good.png")
    NON_UTF8_BAD = os.fsdecode(b"\xff\xfe_bad.jpg")
    CASES[NON_UTF8_GOOD] = (_write(GOOD_PNG), None)
    CASES[NON_UTF8_BAD] = (_write(b"\xff\xfe not a jpeg"), "not an image")


def build(folder: Path, names: list[str] | None = None) -> dict[str, str | None]:
    """Write the cases into `folder`; the expected outcome of every file the scan will find."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    for name in names or list(CASES):
        builder, outcome = CASES[name]
        builder(folder / name)
        expected[name] = outcome
        if name == "loop.jpg":
            expected.update(EXTRA_SKIPS)
    return expected


def unreadable_file_possible() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() != 0  # root reads through chmod 000


# ----------------------------------------------------------------------------- decode, one case at a time


@pytest.mark.parametrize("name", list(CASES), ids=[display_name(n) for n in CASES])
def test_each_hostile_file_decodes_or_is_skipped_with_its_reason(tmp_path: Path, name: str) -> None:
    expected = build(tmp_path, [name])
    found = {p.name: p for p in scan_images(tmp_path)}
    assert set(found) == set(expected)
    for file_name, outcome in expected.items():
        if outcome is None:
            array = decode_image(found[file_name], SIZE)
            assert isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.shape == (*SIZE, 3)
        else:
            with pytest.raises(BadImage) as info:
                decode_image(found[file_name], SIZE)
            assert info.value.reason == outcome


@pytest.mark.skipif(not unreadable_file_possible(), reason="running as root: chmod 000 does not stop root reading")
def test_permission_denied_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(GOOD_PNG)
    path.chmod(0)
    try:
        with pytest.raises(BadImage, match="permission denied"):
            decode_image(path, SIZE)
    finally:
        path.chmod(0o644)


def test_a_folder_named_like_an_image_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "folder.jpg" / "inside.png").write_bytes(GOOD_PNG)
    assert [p.relative_to(tmp_path).as_posix() for p in scan_images(tmp_path)] == ["folder.jpg/inside.png"]
    with pytest.raises(BadImage) as info:
        decode_image(tmp_path / "folder.jpg", SIZE)  # handed to the decoder anyway: refused, not crashed
    assert info.value.reason == NOT_REGULAR


def test_fifo_does_not_block(tmp_path: Path) -> None:
    _fifo(tmp_path / "pipe.png")
    # if this opened the FIFO the usual way it would wait forever for a writer; the test would hang, not fail
    with pytest.raises(BadImage, match="not a regular file"):
        decode_image(tmp_path / "pipe.png", SIZE)


def test_exif_orientation_and_modes_are_honoured(tmp_path: Path) -> None:
    build(tmp_path, ["exif_rotated.jpg", "rgba.png", "palette.png", "sixteen_bit.png", "cmyk.jpg", "one_by_one.png"])
    rotated = decode_image(tmp_path / "exif_rotated.jpg", (16, 16)).astype(int)
    assert np.abs(rotated[1, 8] - RED).max() < 60 and np.abs(rotated[14, 8] - BLUE).max() < 60  # red on top
    rgba = decode_image(tmp_path / "rgba.png", (20, 20))
    assert rgba[10, 2].tolist() == list(RED) and rgba[10, 17].tolist() == [0, 0, 0]  # alpha over black
    palette = decode_image(tmp_path / "palette.png", (20, 20))
    assert palette[10, 2].tolist() == list(RED) and palette[10, 17].tolist() == list(BLUE)
    ramp = decode_image(tmp_path / "sixteen_bit.png", (30, 40))[15, :, 0].astype(int)
    assert ramp[0] < 20 and ramp[-1] > 235 and (np.diff(ramp) >= 0).all()  # full range, not clipped
    cmyk = decode_image(tmp_path / "cmyk.jpg", (8, 8)).astype(int)
    assert np.abs(cmyk[4, 4] - RED).max() < 40
    assert (decode_image(tmp_path / "one_by_one.png", SIZE) == (200, 10, 10)).all()


def test_a_file_that_vanishes_between_scan_and_read(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(GOOD_PNG)
    paths = scan_images(tmp_path)
    paths[1].unlink()  # gone after the scan, before the decode
    with pytest.raises(BadImage) as info:
        decode_image(paths[1], SIZE)
    assert info.value.reason == "vanished"
    report = DecodeReport()
    decoded = [i for batch in iter_decoded(paths, SIZE, 2, report, tmp_path) for i in batch.indices]
    assert decoded == [0, 2, 3]
    assert report.summary()["by_reason"] == {"vanished": 1}
    assert report.summary()["sample"] == [{"path": "1.png", "reason": "vanished"}]


def test_vanished_file_during_scoring(
    tmp_path: Path, script_teacher: Path, digit_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eikd_edge.scoring as scoring
    from eikd_edge.models.teacher import load_teacher

    pool = tmp_path / "pool"
    pool.mkdir()
    for source in sorted(digit_images.glob("*.png"))[:12]:
        shutil.copy(source, pool / source.name)
    real_scan = scoring.scan_images

    def scan_then_delete(root: Path, exclude: tuple[Path, ...] = ()) -> list[Path]:
        found = real_scan(root, exclude)
        found[3].unlink()
        return found

    monkeypatch.setattr(scoring, "scan_images", scan_then_delete)
    scores = scoring.score_pool(load_teacher(script_teacher), pool, torch.device("cpu"), batch_size=5)
    assert scores.files == 12 and len(scores.paths) == 11
    assert scores.skipped["by_reason"] == {"vanished": 1}


# ----------------------------------------------------------------------------- the whole pool, through the CLI


@pytest.fixture(scope="module")
def hostile_pool(tmp_path_factory: pytest.TempPathFactory, digit_images: Path) -> Iterator[tuple[Path, dict]]:
    """60 real digits mixed with every hostile case."""
    pool = tmp_path_factory.mktemp("hostile") / "field"
    expected = build(pool)
    for source in sorted(digit_images.glob("*.png"))[:60]:
        shutil.copy(source, pool / source.name)
        expected[source.name] = None
    yield pool, expected


SETS = ["train.epochs=1", "train.batch_size=16", "student.width=0.5", "train.device=cpu", "selection.batch_size=32"]


def _sets() -> list[str]:
    return [arg for item in SETS for arg in ("--set", item)]


def _check_skips(selection: dict, expected: dict[str, str | None]) -> None:
    bad = {display_name(name): reason for name, reason in expected.items() if reason is not None}
    pool = selection["pool"]
    assert pool["files"] == len(expected)
    assert pool["decoded"] == len(expected) - len(bad)
    assert pool["skipped"]["count"] == len(bad)
    assert pool["skipped"]["by_reason"] == dict(Counter(bad.values()))
    sample = {item["path"]: item["reason"] for item in pool["skipped"]["sample"]}
    assert len(sample) == min(20, len(bad))
    for path, reason in sample.items():
        assert bad[path] == reason, path


def test_select_completes_on_a_hostile_pool(tmp_path: Path, script_teacher: Path, hostile_pool: tuple) -> None:
    pool, expected = hostile_pool
    out = tmp_path / "select"
    args = ["select", "-t", str(script_teacher), "-u", str(pool), "-o", str(out), *_sets()]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    raw = (out / "selection.json").read_bytes()
    raw.decode("ascii")  # names that are not UTF-8 are escaped, the file is plain ASCII JSON
    selection = json.loads(raw)
    _check_skips(selection, expected)
    manifest = {row["path"] for row in selection["manifest"]}
    good = {name for name, reason in expected.items() if reason is None}
    assert manifest == good  # includes the good file whose name is not UTF-8, under its real (openable) name
    if LINUX:
        assert NON_UTF8_GOOD in manifest
        assert display_name(NON_UTF8_BAD) == "\\xff\\xfe_bad.jpg"
    assert f"{len(expected) - len(good)} skipped" in result.output

    # the cached teacher outputs are read back, names intact (--overwrite keeps the self-checking score cache)
    again = runner.invoke(app, [*args, "--overwrite"], terminal_width=200)
    assert again.exit_code == 0, again.output
    cached = json.loads((out / "selection.json").read_text())
    assert cached["pool"]["scoring_s"] == 0.0
    assert {row["path"] for row in cached["manifest"]} == manifest


def test_distill_completes_on_a_hostile_pool(tmp_path: Path, script_teacher: Path, hostile_pool: tuple) -> None:
    pool, expected = hostile_pool
    out = tmp_path / "run"
    args = ["distill", "-t", str(script_teacher), "-u", str(pool), "-o", str(out), *_sets()]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert (out / "student.pt").is_file()
    _check_skips(json.loads((out / "selection.json").read_text()), expected)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection"]["skipped"] == sum(reason is not None for reason in expected.values())


def test_all_bad_folder_is_one_error_line(tmp_path: Path, script_teacher: Path) -> None:
    pool = tmp_path / "bad"
    expected = build(pool, [name for name, (_, reason) in CASES.items() if reason is not None])
    result = runner.invoke(app, ["select", "-t", str(script_teacher), "-u", str(pool), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    message = result.output.strip()
    assert message.startswith("error: none of the") and f"{len(expected)} image files" in message
    assert "most common: " in message


def test_empty_folder_is_one_error_line(tmp_path: Path, script_teacher: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    args = ["select", "-t", str(script_teacher), "-u", str(tmp_path / "empty"), "-o", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: no images found in")
