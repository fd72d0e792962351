"""The 224-pixel photos benchmark (benchmarks/photos224.py): EXIF-turned camera JPEGs come back upright, and a
tiny `--quick` run goes through build, distill and export end to end (slow: ~1 minute on one CPU thread)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from benchmarks import photos224
from benchmarks.task_photos224 import STORED, save_jpeg


def test_camera_jpegs_store_turned_pixels_that_exif_turns_back(tmp_path: Path) -> None:
    image = Image.fromarray(np.tile(np.arange(160, dtype=np.uint8)[None, :, None], (90, 1, 3)))  # a ramp: not symmetric
    seen = set()
    for index in range(40):
        path = tmp_path / f"{index}.jpg"
        orientation = save_jpeg(image, path, np.random.default_rng(index))
        seen.add(orientation)
        with Image.open(path) as stored:
            upright = np.asarray(ImageOps.exif_transpose(stored), np.float64)
        assert upright.shape == (90, 160, 3)
        assert np.abs(upright - np.asarray(image, np.float64)).mean() < 3  # JPEG loss only
    assert seen == {1, *STORED}


@pytest.mark.slow
def test_quick_mode_builds_distils_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "photos224.json"
    argv = [
        "--quick",
        "--students",
        "mobilenet_v3_small",
        "--inits",
        "pretrained",
        "--cache",
        str(tmp_path),
        "--out",
        str(out),
    ]
    assert photos224.main(argv) == 0
    summary = json.loads(out.read_text())
    (row,) = summary["runs"]
    assert (tmp_path / "photos224-quick-v1" / "pretrained-mobilenet_v3_small.pt").is_file()
    assert row["distill"]["rc"] == 0 and row["export"]["rc"] == 0
    assert row["distill"]["peak_rss_mb"] > 100 and row["train_images_per_s"] > 0
    assert row["int8_status"] in ("ok", "failed_gate") and isinstance(row["int8_recommended"], bool)
    assert row["loaded_tensors"] > 100  # the pretrained file started the student (all but the classifier)
