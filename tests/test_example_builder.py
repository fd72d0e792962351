"""The bundled digits example's builder (examples/digits/build.py), run at a tiny size."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from rich.progress import Progress
from sklearn.datasets import load_digits

from eikd_edge.data import decode_image, scan_images
from eikd_edge.models.teacher import load_teacher

BUILDER = Path(__file__).resolve().parents[1] / "examples" / "digits" / "build.py"
POOL = 60
SEVENTEEN_LEVELS = {round(v * 255 / 16 + 1e-9) for v in range(17)}


@pytest.fixture(scope="module")
def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_example_build", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(builder: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("digits")
    manifest = builder.build(out, pool_size=POOL, teacher_epochs=1, seed=0)
    return out, manifest


def _truth(out: Path) -> list[dict[str, str]]:
    with open(out / "field_truth.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L" and image.size == (8, 8), path
        return np.asarray(image)


def _tree_bytes(root: Path, names: list[str]) -> dict[str, bytes]:
    files = {}
    for name in names:
        path = root / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                files[file.relative_to(root).as_posix()] = file.read_bytes()
    return files


def test_teacher_loads_through_the_tool(built: tuple[Path, dict]) -> None:
    out, manifest = built
    teacher = load_teacher(out / "teacher.pt")
    assert teacher.format == "torchscript"
    assert teacher.num_classes == 10
    assert teacher.embedding_dim == 64
    assert teacher.spec.input_size == (32, 32)
    assert teacher.spec.classes == tuple(str(d) for d in range(10))
    sidecar = yaml.safe_load((out / "teacher.yaml").read_text())
    assert set(sidecar) == {"input_size", "mean", "std", "classes", "arch"}
    assert sidecar["arch"] == "cifar_resnet20"  # runs as an eager module: its BatchNorm layers are visible
    assert sidecar["input_size"] == [32, 32] and len(sidecar["mean"]) == 3 and len(sidecar["std"]) == 3
    assert manifest["teacher"]["sha256"] == teacher.sha256
    assert 0.0 <= manifest["teacher_val_top1"] <= 1.0
    assert 0.0 <= manifest["teacher_printed_digit_top1"] <= 1.0


def test_manifest_file_matches_return_value(built: tuple[Path, dict]) -> None:
    out, manifest = built
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert "/" not in json.dumps(manifest["generation"]["fonts"])  # names only, no paths of this machine


def test_field_pool_is_unlabeled_8x8_with_a_third_of_distractors(built: tuple[Path, dict]) -> None:
    out, manifest = built
    files = scan_images(out / "field")
    assert len(files) == POOL
    assert sorted(p.name for p in (out / "field").iterdir()) == [p.name for p in files]  # nothing but the PNGs
    for path in files:
        assert set(np.unique(_pixels(path)).tolist()) <= SEVENTEEN_LEVELS
    rows = _truth(out)
    assert sorted(r["filename"] for r in rows) == [p.name for p in files]
    kinds = [r["kind"] for r in rows]
    distractors = sum(kind != "digit" for kind in kinds)
    assert distractors * 3 >= POOL
    assert {"digit", "letter", "photo", "noise"} == set(kinds)
    counts = manifest["counts"]
    assert counts["printed_digits"] == kinds.count("digit")
    assert counts["letters"] == kinds.count("letter")
    assert counts["photo_patches"] == kinds.count("photo")
    assert counts["noise"] == kinds.count("noise")
    per_digit = {d: sum(r["kind"] == "digit" and r["label"] == d for r in rows) for d in map(str, range(10))}
    assert counts["per_digit"] == per_digit
    assert per_digit["7"] < min(v for d, v in per_digit.items() if d != "7")
    assert manifest["pool_size"] == POOL
    assert manifest["distractor_fraction"] == pytest.approx(distractors / POOL, abs=1e-4)


def test_val_folder_is_the_handwritten_test_split(built: tuple[Path, dict]) -> None:
    out, manifest = built
    class_dirs = sorted(d.name for d in (out / "val").iterdir())
    assert class_dirs == [str(d) for d in range(10)]
    digits = load_digits()
    total = 0
    for name in class_dirs:
        for path in scan_images(out / "val" / name):
            index = int(path.stem)
            assert digits.target[index] == int(name)
            expected = np.floor(digits.images[index] * 255 / 16 + 0.5).astype(np.uint8)
            assert np.array_equal(_pixels(path), expected)
            total += 1
    assert total == manifest["val"]["images"] == len(digits.target) - manifest["teacher"]["train_images"]


def test_no_field_image_is_an_sklearn_digit(built: tuple[Path, dict]) -> None:
    out, _ = built
    digits = np.floor(load_digits().images * 255 / 16 + 0.5).astype(np.uint8)
    known = {image.tobytes() for image in digits}
    for path in scan_images(out / "field"):
        assert _pixels(path).tobytes() not in known, path.name


def test_teacher_sees_exactly_the_tools_decoded_pixels(builder: ModuleType, built: tuple[Path, dict]) -> None:
    out, _ = built
    paths = scan_images(out / "val")[:40] + scan_images(out / "field")[:40]
    levels = np.stack([np.floor(_pixels(p).astype(np.float64) * 16 / 255 + 0.5).astype(np.uint8) for p in paths])
    ours = builder.model_pixels(levels)
    for path, pixels in zip(paths, ours, strict=True):
        assert np.array_equal(decode_image(path, (32, 32)).transpose(2, 0, 1), pixels), path


def test_field_and_val_generation_is_byte_identical(
    builder: ModuleType, built: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = built
    for run in ("a", "b"):
        builder.write_field(tmp_path / run, POOL, 0)
        builder.write_val(tmp_path / run)
    names = ["field", "field_truth.csv", "val"]
    first = _tree_bytes(tmp_path / "a", names)
    assert len(first) == POOL + 1 + 899
    assert first == _tree_bytes(tmp_path / "b", names)
    assert first == _tree_bytes(out, names)  # what build() wrote
    builder.write_field(tmp_path / "c", POOL, 1)
    assert _tree_bytes(tmp_path / "c", ["field"]) != _tree_bytes(tmp_path / "a", ["field"])


def test_smaller_rebuild_leaves_no_stale_field_files(builder: ModuleType, tmp_path: Path) -> None:
    builder.write_field(tmp_path, 12, 0)
    builder.write_field(tmp_path, 9, 0)
    assert len(scan_images(tmp_path / "field")) == 9
    assert len(_truth(tmp_path)) == 9


def test_teacher_training_and_saving_are_reproducible(builder: ModuleType, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 17, (48, 8, 8)).astype(np.uint8)
    pixels = torch.from_numpy(builder.model_pixels(levels))
    labels = torch.arange(48) % 10
    spec = builder.InputSpec((32, 32), (0.3,) * 3, (0.4,) * 3, builder.CLASSES)
    saved = []
    for run in ("a", "b"):
        with Progress(disable=True) as progress:
            model = builder.train_teacher(pixels, labels, spec, 1, 0, progress)
        (tmp_path / run).mkdir()
        builder.save_teacher(model, tmp_path / run, spec)
        saved.append(_tree_bytes(tmp_path / run, ["teacher.pt", "teacher.yaml"]))
    assert saved[0] == saved[1]  # same weights, and the TorchScript archive itself is byte-stable
