"""Image folders on real files: scanning, decoding every common mode, skipping bad files, normalising."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eikd_edge.data import (
    BadImage,
    DecodeReport,
    decode_image,
    iter_decoded,
    load_labeled_folder,
    normalize,
    scan_images,
)
from eikd_edge.errors import EikdError
from eikd_edge.models.spec import InputSpec

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 10), **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **save)
    return path


def noise_bytes(fmt: str, size: int = 64) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def assert_color(pixel: np.ndarray, color: tuple[int, int, int], tol: int = 40) -> None:
    assert np.abs(pixel.astype(int) - np.array(color)).max() <= tol, (pixel.tolist(), color)


# ----------------------------------------------------------------------------- scan_images


def test_scan_images_recursive_case_insensitive_sorted(tmp_path: Path) -> None:
    for rel in ("b.Png", "A.JPG", "sub/c.tiff", "sub/deep/d.jpeg", "sub/deep/e.webp", "z.bmp", "sub/f.TIF"):
        solid(tmp_path / rel, RED, format="PNG")  # the content does not matter to the scan
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "readme.md").write_text("nor this")
    (tmp_path / "sub" / "png").write_text("no suffix")
    found = scan_images(tmp_path)
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert sorted(rel) == sorted(
        ["A.JPG", "b.Png", "sub/c.tiff", "sub/deep/d.jpeg", "sub/deep/e.webp", "z.bmp", "sub/f.TIF"]
    )
    assert rel == sorted(rel)
    assert scan_images(tmp_path) == found  # deterministic
    assert all(p.is_file() for p in found)


def test_scan_images_survives_symlink_loops(tmp_path: Path) -> None:
    solid(tmp_path / "a.png", RED)
    solid(tmp_path / "sub" / "b.png", GREEN)
    os.symlink(tmp_path / "sub", tmp_path / "sub" / "loop")  # a folder linked into itself
    os.symlink(tmp_path, tmp_path / "sub" / "up")  # and a link back to the root
    found = [p.relative_to(tmp_path).as_posix() for p in scan_images(tmp_path)]
    assert found == ["a.png", "sub/b.png"]


def test_scan_images_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(EikdError, match="not found"):
        scan_images(tmp_path / "nope")
    file = solid(tmp_path / "x.png", RED)
    with pytest.raises(EikdError):
        scan_images(file)


def test_scan_images_empty_folder(tmp_path: Path) -> None:
    assert scan_images(tmp_path) == []


# ----------------------------------------------------------------------------- decode_image


def check_decoded(array: np.ndarray, size: tuple[int, int]) -> None:
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.uint8
    assert array.shape == (*size, 3)


def test_decode_rgb(tmp_path: Path) -> None:
    array = decode_image(solid(tmp_path / "x.png", (10, 120, 250), size=(40, 30)), (16, 16))
    check_decoded(array, (16, 16))
    assert (array == np.array([10, 120, 250], dtype=np.uint8)).all()


def test_decode_non_square_target(tmp_path: Path) -> None:
    array = decode_image(solid(tmp_path / "x.png", GREEN, size=(7, 9)), (12, 20))
    check_decoded(array, (12, 20))
    assert (array == np.array(GREEN, dtype=np.uint8)).all()


def test_decode_rgba_composites_alpha(tmp_path: Path) -> None:
    pixels = np.zeros((20, 20, 4), dtype=np.uint8)
    pixels[:, :10] = (255, 0, 0, 255)  # opaque red on the left
    pixels[:, 10:] = (0, 255, 0, 0)  # fully transparent green on the right
    Image.fromarray(pixels, mode="RGBA").save(tmp_path / "x.png")
    array = decode_image(tmp_path / "x.png", (20, 20))
    check_decoded(array, (20, 20))
    assert_color(array[10, 2], RED, tol=0)
    assert_color(array[10, 17], (0, 0, 0), tol=0)  # transparency becomes the black background, not the hidden green


def test_decode_palette(tmp_path: Path) -> None:
    image = Image.new("P", (10, 10))
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.paste(1, (5, 0, 10, 10))
    image.save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode == "P"
    array = decode_image(tmp_path / "x.png", (10, 10))
    check_decoded(array, (10, 10))
    assert_color(array[5, 1], RED, tol=0)
    assert_color(array[5, 8], BLUE, tol=0)


def test_decode_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (10, 10))
    image.putpalette([*RED, *GREEN] + [0] * (256 * 3 - 6))
    image.paste(1, (5, 0, 10, 10))
    image.save(tmp_path / "x.png", transparency=1)
    array = decode_image(tmp_path / "x.png", (10, 10))
    check_decoded(array, (10, 10))
    assert_color(array[5, 1], RED, tol=0)
    assert_color(array[5, 8], (0, 0, 0), tol=0)


def test_decode_grayscale(tmp_path: Path) -> None:
    Image.new("L", (9, 9), 100).save(tmp_path / "x.png")
    array = decode_image(tmp_path / "x.png", (8, 8))
    check_decoded(array, (8, 8))
    assert (array == 100).all()


def test_decode_16_bit_png_uses_the_full_range(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 60000, 32).astype(np.uint16), (32, 1))  # dark → bright, left → right
    Image.fromarray(ramp).save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode.startswith("I")
    array = decode_image(tmp_path / "x.png", (32, 32))
    check_decoded(array, (32, 32))
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    row = array[16, :, 0].astype(int)
    assert row[0] <= 10 and row[-1] >= 245  # not clipped to white, not crushed to black
    assert (np.diff(row) >= 0).all()
    assert len(np.unique(row)) > 16


def test_decode_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "x.jpg", quality=95)
    assert Image.open(tmp_path / "x.jpg").mode == "CMYK"
    array = decode_image(tmp_path / "x.jpg", (8, 8))
    check_decoded(array, (8, 8))
    assert_color(array[4, 4], RED)


def test_decode_tall_image_is_centre_cropped(tmp_path: Path) -> None:
    pixels = np.zeros((60, 20, 3), dtype=np.uint8)
    pixels[:20] = RED
    pixels[20:40] = GREEN
    pixels[40:] = BLUE
    Image.fromarray(pixels).save(tmp_path / "tall.png")
    array = decode_image(tmp_path / "tall.png", (16, 16))
    check_decoded(array, (16, 16))
    # the shorter side (width 20) is scaled to 16, height to 48; the centre 16 rows are the green band
    for y, x in ((0, 0), (0, 15), (8, 8), (15, 0), (15, 15)):
        assert_color(array[y, x], GREEN)  # bilinear blends a little at the band edges


def test_decode_wide_image_keeps_the_centre(tmp_path: Path) -> None:
    pixels = np.zeros((10, 40, 3), dtype=np.uint8)
    pixels[:, :10] = RED
    pixels[:, 10:30] = GREEN
    pixels[:, 30:] = BLUE
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    array = decode_image(tmp_path / "wide.png", (10, 10))
    assert (array == np.array(GREEN, dtype=np.uint8)).all()


def test_decode_honours_exif_orientation(tmp_path: Path) -> None:
    # Stored 40 wide × 20 tall: left half red, right half blue. Orientation 6 = "rotate 90° clockwise to display",
    # so the displayed image is 20 wide × 40 tall with red on top and blue at the bottom.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = RED
    pixels[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    solid(tmp_path / "plain.jpg", RED)  # sanity: the EXIF really is in the file
    assert Image.open(tmp_path / "rotated.jpg").getexif()[0x0112] == 6

    array = decode_image(tmp_path / "rotated.jpg", (16, 16))
    check_decoded(array, (16, 16))
    assert_color(array[1, 1], RED)
    assert_color(array[1, 14], RED)
    assert_color(array[14, 1], BLUE)
    assert_color(array[14, 14], BLUE)


def test_decode_without_exif_keeps_stored_orientation(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = RED
    pixels[:, 20:] = BLUE
    Image.fromarray(pixels).save(tmp_path / "x.jpg", quality=95)
    array = decode_image(tmp_path / "x.jpg", (16, 16))
    assert_color(array[1, 1], RED)
    assert_color(array[1, 14], BLUE)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.png", b"", "not an image"),
        ("text.jpg", b"this is not a jpeg at all\n" * 10, "not an image"),
        ("truncated.png", noise_bytes("PNG")[: len(noise_bytes("PNG")) // 2], "corrupt"),
        ("truncated.jpg", noise_bytes("JPEG")[: len(noise_bytes("JPEG")) // 2], "corrupt"),
    ],
)
def test_decode_bad_files_raise_bad_image(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadImage) as info:
        decode_image(path, (16, 16))
    assert info.value.reason.startswith(reason)
    assert str(info.value) == info.value.reason


def test_decode_missing_file_is_bad_image(tmp_path: Path) -> None:
    with pytest.raises(BadImage) as info:
        decode_image(tmp_path / "gone.png", (8, 8))
    assert info.value.reason == "vanished"


# ----------------------------------------------------------------------------- iter_decoded


def test_iter_decoded_mixed_folder(tmp_path: Path) -> None:
    colors = {
        "a.png": (250, 0, 0),
        "c.png": (0, 250, 0),
        "e.png": (0, 0, 250),
        "g.png": (120, 120, 0),
        "h.png": (0, 120, 120),
    }
    for name, color in colors.items():
        solid(tmp_path / name, color)
    (tmp_path / "b.jpg").write_text("text, not a jpeg")
    (tmp_path / "d.png").write_bytes(b"")
    (tmp_path / "f.png").write_bytes(noise_bytes("PNG")[:200])
    paths = scan_images(tmp_path)
    names = [p.name for p in paths]
    assert names == ["a.png", "b.jpg", "c.png", "d.png", "e.png", "f.png", "g.png", "h.png"]

    report = DecodeReport()
    batches = list(iter_decoded(paths, (6, 6), 3, report, tmp_path, workers=3))
    indices = [i for batch in batches for i in batch.indices]
    assert indices == [0, 2, 4, 6, 7]
    assert all(len(batch.indices) <= 3 for batch in batches)
    images = torch.cat([batch.images for batch in batches])
    assert images.dtype == torch.uint8
    assert images.shape == (5, 3, 6, 6)
    for image, index in zip(images, indices, strict=True):
        expected = torch.tensor(colors[names[index]], dtype=torch.uint8).view(3, 1, 1)
        assert torch.equal(image, expected.expand(3, 6, 6)), names[index]

    summary = report.summary()
    assert summary["count"] == 3
    assert summary["by_reason"] == {"not an image": 2, "corrupt (OSError)": 1}
    assert {item["path"] for item in summary["sample"]} == {"b.jpg", "d.png", "f.png"}  # relative to the root


def test_iter_decoded_all_bad_yields_nothing(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    report = DecodeReport()
    assert list(iter_decoded([tmp_path / "x.png"], (4, 4), 8, report)) == []
    assert report.summary()["count"] == 1
    assert report.summary()["sample"][0]["path"] == str(tmp_path / "x.png")


# ----------------------------------------------------------------------------- normalize


def test_normalize_maps_0_and_255() -> None:
    spec = InputSpec(input_size=(1, 2), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    images = torch.zeros(2, 3, 1, 2, dtype=torch.uint8)
    images[:, :, :, 1] = 255
    out = normalize(images, spec)
    assert out.dtype == torch.float32
    assert out.shape == images.shape
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    assert torch.allclose(out[0, :, 0, 0], -mean / std, atol=1e-5)
    assert torch.allclose(out[1, :, 0, 1], (1 - mean) / std, atol=1e-5)
    assert out[0, :, 0, 0].tolist() == pytest.approx([-2.5, -1.6, -0.6], abs=1e-5)
    assert out[0, :, 0, 1].tolist() == pytest.approx([2.5, 2.4, 1.4], abs=1e-5)


# ----------------------------------------------------------------------------- load_labeled_folder


def test_load_labeled_folder_labels_follow_sub_folders(tmp_path: Path) -> None:
    spec = InputSpec(input_size=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3, classes=("dog", "cat", "bird"))
    solid(tmp_path / "cat" / "1.png", RED)
    solid(tmp_path / "cat" / "2.jpg", RED, format="PNG")
    solid(tmp_path / "dog" / "3.png", BLUE)
    solid(tmp_path / "dog" / "nested" / "4.png", BLUE)
    (tmp_path / "dog" / "broken.png").write_bytes(b"")  # skipped, does not shift the labels
    images, labels, paths = load_labeled_folder(tmp_path, spec)
    assert images.shape == (4, 3, 8, 8)
    assert images.dtype == torch.uint8
    assert len(labels) == len(paths) == 4
    for image, label, path in zip(images, labels.tolist(), paths, strict=True):
        folder = Path(path).relative_to(tmp_path).parts[0]
        assert spec.classes[label] == folder
        expected = RED if folder == "cat" else BLUE
        assert image[:, 4, 4].tolist() == list(expected)
    assert sorted(labels.tolist()) == [0, 0, 1, 1]


def test_load_labeled_folder_unknown_class_raises(tmp_path: Path) -> None:
    spec = InputSpec(input_size=(8, 8), classes=("dog", "cat"))
    solid(tmp_path / "cat" / "1.png", RED)
    solid(tmp_path / "cow" / "2.png", RED)
    with pytest.raises(EikdError, match="cow"):
        load_labeled_folder(tmp_path, spec)
    with pytest.raises(EikdError):
        load_labeled_folder(tmp_path / "missing", spec)
