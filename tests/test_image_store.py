"""The decoded training images live in a memory-mapped file in the run folder: exact pixels, reused while the
images and the decode policy are unchanged, never trusted when the record does not match, never half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eikd_edge.atomic import sweep_temps
from eikd_edge.data import decode_image
from eikd_edge.image_files import data_file, record_file, store_names
from eikd_edge.image_store import load_or_decode, remove_sets
from eikd_edge.models.spec import InputSpec

SPEC = InputSpec(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), classes=tuple("0123456789"))


def _pool(digit_images: Path) -> list[Path]:
    return sorted(digit_images.iterdir())  # 120 PNGs and broken.jpg


def test_stored_set_holds_the_decoders_pixels_and_drops_broken_files(tmp_path: Path, digit_images: Path) -> None:
    paths = _pool(digit_images)
    stored = load_or_decode(tmp_path, "train", paths, SPEC, workers=1)
    broken = [i for i, p in enumerate(paths) if p.name == "broken.jpg"]
    assert not stored.reused
    assert list(stored.kept) == [i for i in range(len(paths)) if i not in broken]
    assert stored.images.shape == (len(paths) - 1, 3, 32, 32) and stored.images.dtype == torch.uint8
    for row, position in zip(stored.images, stored.kept, strict=True):
        expected = torch.from_numpy(np.array(decode_image(paths[position], SPEC))).permute(2, 0, 1)
        assert torch.equal(row, expected)
    assert data_file(tmp_path, "train").stat().st_size == stored.images.numel()


def test_any_index_reads_exactly_the_rows_asked_for(tmp_path: Path, digit_images: Path) -> None:
    stored = load_or_decode(tmp_path, "train", _pool(digit_images), SPEC, workers=1)
    everything = stored.images[:]
    assert everything.shape == stored.images.shape and len(stored.images) == 120
    shuffled = torch.randperm(120, generator=torch.Generator().manual_seed(0))[:17]
    assert torch.equal(stored.images[shuffled], everything[shuffled])
    assert torch.equal(stored.images[shuffled.numpy()], everything[shuffled])
    assert torch.equal(stored.images[10:30], everything[10:30])
    assert torch.equal(stored.images[5:50:7], everything[5:50:7])
    assert torch.equal(stored.images[-1], everything[-1])
    with pytest.raises(IndexError):
        stored.images[torch.tensor([0, 120])]


def test_second_load_reuses_the_file_and_a_changed_image_is_decoded_again(tmp_path: Path, digit_images: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    for path in _pool(digit_images)[:20]:
        (pool / path.name).write_bytes(path.read_bytes())
    paths = sorted(pool.iterdir())
    first = load_or_decode(tmp_path / "cache", "train", paths, SPEC, workers=1)
    written = data_file(tmp_path / "cache", "train").stat()
    again = load_or_decode(tmp_path / "cache", "train", paths, SPEC, workers=1)
    assert again.reused and torch.equal(again.images[:], first.images[:])
    assert data_file(tmp_path / "cache", "train").stat().st_mtime_ns == written.st_mtime_ns

    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8), mode="L").save(paths[3])  # the user edits one image
    os.utime(paths[3], ns=(written.st_mtime_ns + 10**9, written.st_mtime_ns + 10**9))
    changed = load_or_decode(tmp_path / "cache", "train", paths, SPEC, workers=1)
    assert not changed.reused
    assert int(changed.images[3].min()) == 255
    bigger = InputSpec(input_size=(40, 40), mean=SPEC.mean, std=SPEC.std, classes=SPEC.classes)
    resized = load_or_decode(tmp_path / "cache", "train", paths, bigger, workers=1)
    assert not resized.reused and resized.images.shape[-2:] == (40, 40)


@pytest.mark.parametrize(
    "tamper",
    ["positions out of range", "positions not increasing", "count disagrees", "file too short", "data is a symlink"],
)
def test_a_record_that_does_not_match_its_file_is_never_trusted(
    tmp_path: Path, digit_images: Path, tamper: str
) -> None:
    paths = _pool(digit_images)[:30]
    cache = tmp_path / "cache"
    good = load_or_decode(cache, "train", paths, SPEC, workers=1)
    expected = good.images[:]
    record = json.loads(record_file(cache, "train").read_text())
    data = data_file(cache, "train")
    if tamper == "positions out of range":
        record["kept"][-1] = 10_000
    elif tamper == "positions not increasing":
        record["kept"][0], record["kept"][1] = record["kept"][1], record["kept"][0]
    elif tamper == "count disagrees":
        record["count"] = record["count"] + 1
    elif tamper == "file too short":
        data.write_bytes(data.read_bytes()[:-1])
    else:
        outside = tmp_path / "elsewhere.u8"
        outside.write_bytes(data.read_bytes())
        data.unlink()
        data.symlink_to(outside)
    record_file(cache, "train").write_text(json.dumps(record))
    again = load_or_decode(cache, "train", paths, SPEC, workers=1)
    assert not again.reused
    assert torch.equal(again.images[:], expected) and list(again.kept) == list(good.kept)
    assert not data_file(cache, "train").is_symlink()


_SLOW_DECODE = """
import sys, time
from pathlib import Path
import eikd_edge.data as data
from eikd_edge.image_store import load_or_decode
from tests.test_image_store import SPEC
real = data.decode_image
def slow(path, target):
    time.sleep(0.01)
    return real(path, target)
data.decode_image = slow
paths = sorted(Path(sys.argv[1]).glob("*.png")) * 40
load_or_decode(Path(sys.argv[2]), "train", paths, SPEC, workers=1)
"""


def test_a_killed_decode_leaves_no_half_file_and_the_next_run_decodes_cleanly(
    tmp_path: Path, digit_images: Path
) -> None:
    cache = tmp_path / "cache"
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_DECODE, str(digit_images), str(cache)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    deadline = time.monotonic() + 60
    while not list(cache.glob(".images-train.u8.*.tmp")):
        assert process.poll() is None and time.monotonic() < deadline, "the decode ended before it could be killed"
        time.sleep(0.01)
    time.sleep(0.3)  # well inside the ~48 s it would take
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not data_file(cache, "train").exists() and not record_file(cache, "train").exists()
    swept = sweep_temps(cache, lambda name: name in store_names())
    assert swept and not list(cache.iterdir())
    paths = _pool(digit_images)[:10]
    fresh = load_or_decode(cache, "train", paths, SPEC, workers=1)
    assert not fresh.reused and len(fresh.kept) == 10


def test_remove_sets_drops_only_the_image_files(tmp_path: Path, digit_images: Path) -> None:
    load_or_decode(tmp_path, "train", _pool(digit_images)[:5], SPEC, workers=1)
    load_or_decode(tmp_path, "agreement", _pool(digit_images)[5:8], SPEC, workers=1)
    (tmp_path / "teacher_outputs.pt").write_bytes(b"kept")
    remove_sets(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher_outputs.pt"]
