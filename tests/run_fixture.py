"""A tiny but real run folder for export/validate tests: real digits, a fitted teacher, a briefly distilled student.

Teacher: TorchScript cifar_resnet8 whose BatchNorm statistics and last layer are fitted to scikit-learn's digits
(about 77% top-1). Student: cifar_resnet8 width 0.5 trained for 80 KD steps on the teacher's logits. Pool: 48 digit
PNGs (8x8) the teacher never saw, with selection.json (40 selected, 13 of them held out) and recipe.resolved.yaml.
Built once per test session (about 5 s); each test that writes into a run gets its own copy of the run folder,
while the teacher, pool and labeled folder are shared read-only.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from eikd_edge.atomic import write_json_atomic
from eikd_edge.checkpoint import save_student
from eikd_edge.config import SelectionConfig
from eikd_edge.data import DecodeReport, normalize, resize_center_crop
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import file_sha256
from eikd_edge.models.zoo import build_model
from eikd_edge.run import RunPaths
from eikd_edge.run_files import ClassCount, ManifestEntry, SelectionFile, SelectionPool

SPEC = InputSpec((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))
POOL = range(1500, 1548)  # 48 field images the teacher never trained on
VAL = range(1700, 1740)  # 40 labeled images for --val
TRAIN = range(0, 600)


@dataclass(frozen=True)
class FixtureRun:
    run: RunPaths
    teacher: Path
    pool: Path
    val: Path

    @property
    def root(self) -> Path:
        return self.run.root


_BASE: dict[str, FixtureRun] = {}


def fresh_run(factory: pytest.TempPathFactory, name: str) -> FixtureRun:
    """A private copy of the session's run folder (artifacts written into it do not leak into other tests)."""
    if "base" not in _BASE:
        _BASE["base"] = build_run(factory.mktemp("eikd-base"))
    base = _BASE["base"]
    target = factory.mktemp(name) / "run"
    shutil.copytree(base.root, target)
    return FixtureRun(RunPaths(target), base.teacher, base.pool, base.val)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * 255 / 16).astype(np.uint8), digits.target.astype(np.int64)


def _as_input(pixels: np.ndarray) -> torch.Tensor:
    """8x8 grey digits -> uint8 [N,3,32,32] exactly as eikd_edge.data decodes the PNGs."""
    arrays = [
        np.asarray(resize_center_crop(Image.fromarray(p, mode="L").convert("RGB"), SPEC.input_size)) for p in pixels
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _fit_head(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.nn.Module:
    """Seconds, not minutes: set BatchNorm statistics on the data, then fit the last Linear by ridge regression.

    A random convolutional body with a fitted head is a real, confident classifier (about 77% on digits).
    """
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the passes below
    for i in range(0, len(x), 200):
        model(x[i : i + 200])
    model.eval()
    features = torch.cat(
        [model.pool(model.layers(model.stem(x[i : i + 200]))).flatten(1) for i in range(0, len(x), 200)]
    )
    design = torch.cat([features, torch.ones(len(features), 1)], 1).double()
    ridge = 1e-3 * torch.eye(design.shape[1], dtype=torch.float64)
    solution = torch.linalg.solve(design.T @ design + ridge, design.T @ target.double()).float()
    model.fc.weight.copy_(solution[:-1].T)
    model.fc.bias.copy_(solution[-1])
    return model


def _distil(student: torch.nn.Module, x: torch.Tensor, teacher_logits: torch.Tensor, steps: int) -> torch.nn.Module:
    """A few real KD steps, so the student has trained (quantization-friendly) weights, not a random body."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    student.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=generator)
        log_p = F.log_softmax(student(x[idx]) / 2, 1)
        loss = F.kl_div(log_p, F.softmax(teacher_logits[idx] / 2, 1), reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return student.eval()


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Small models on a shared 2-core box: with another process busy, 2 OpenMP threads ran 17-25x slower than 1
    (measured), so these tests run torch single-threaded and restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_run(root: Path) -> FixtureRun:
    with torch_threads(1):
        return _build_run(root)


def _build_run(root: Path) -> FixtureRun:
    torch.manual_seed(0)
    pixels, labels = _digits()
    x_train = normalize(_as_input(pixels[list(TRAIN)]), SPEC)
    onehot = F.one_hot(torch.from_numpy(labels[list(TRAIN)]), 10).float() * 8.0
    teacher = _fit_head(build_model("cifar_resnet8", 10), x_train, onehot)
    teacher_path = root / "teacher.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(teacher).save(str(teacher_path))
    spec_dict = SPEC.to_dict()
    (root / "teacher.yaml").write_text(yaml.safe_dump(spec_dict))

    with torch.no_grad():
        soft_targets = teacher(x_train)
    student = _distil(build_model("cifar_resnet8", 10, width=0.5), x_train, soft_targets, 80)

    pool = root / "pool"
    pool.mkdir()
    for i in POOL:
        Image.fromarray(pixels[i], mode="L").save(pool / f"{i:04d}.png")
    val = root / "val"
    for i in VAL:
        (val / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i], mode="L").save(val / str(labels[i]) / f"{i:04d}.png")

    run = RunPaths(root / "run")
    run.root.mkdir()
    teacher_record = {"path": str(teacher_path.resolve()), "sha256": file_sha256(teacher_path)}
    extra = {"recipe": {"method": "eikd"}, "teacher": teacher_record}
    save_student(run.student, student, "cifar_resnet8", {"width": 0.5}, SPEC, extra=extra)
    with torch.no_grad():
        probs = F.softmax(teacher(normalize(_as_input(pixels[list(POOL)]), SPEC)), 1)
    _write_selection(run, pool, probs)
    resolved = {
        "eikd_edge_version": "test",
        "inputs": {
            "teacher": str(teacher_path.resolve()),
            "teacher_arch": None,
            "trust_pickle": False,
            "spec_overrides": {},
            "unlabeled": str(pool.resolve()),
            "val": str(val.resolve()),
        },
        "recipe": {"method": "eikd", "student": {"arch": "cifar_resnet8", "width": 0.5}},
    }
    run.recipe.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return FixtureRun(run, teacher_path, pool, val)


def _write_selection(run: RunPaths, pool: Path, probs: torch.Tensor) -> None:
    """40 of 48 selected (the most confident), every third selected image held out: 13-14 holdout images.

    Built from run_files.SelectionFile, in the shape `select` writes (Selection.to_json): EIKD's top-scored sampler
    by confidence without class balance (keep_fraction 40/48), no agreement slice.
    """
    confidence, predicted = probs.max(1)
    order = torch.argsort(confidence, descending=True).tolist()
    selected = set(order[:40])
    manifest = []
    for rank, index in enumerate(order):
        is_selected = index in selected
        split = None if not is_selected else ("holdout" if rank % 3 == 2 else "train")
        manifest.append(
            ManifestEntry(
                path=f"{POOL[index]:04d}.png",
                predicted=SPEC.classes[int(predicted[index])],
                confidence=float(confidence[index]),
                score=float(confidence[index]),
                selected=is_selected,
                split=split,
            )
        )
    classes = [
        ClassCount(
            name=name,
            candidates=sum(e.predicted == name for e in manifest),
            quota=sum(e.predicted == name for e in manifest),  # without class balance a class may take them all
            selected=sum(e.predicted == name and bool(e.selected) for e in manifest),
            deficit=0,
        )
        for name in SPEC.classes
    ]
    settings = SelectionConfig(
        sampler="top", keep_fraction=40 / 48, balance=False, holdout_fraction=0.33, agreement_fraction=0.0
    )
    selection = SelectionFile(
        method="eikd",
        sampler="top",
        closeness_from=[],
        settings=settings.model_dump(mode="json"),
        pool=SelectionPool(
            root=str(pool.resolve()),
            files=len(POOL),
            decoded=len(POOL),
            skipped=DecodeReport().summary(),
            scoring_s=0.0,
        ),
        selected_count=len(selected),
        train_count=sum(e.split == "train" for e in manifest),
        holdout_count=sum(e.split == "holdout" for e in manifest),
        agreement_count=0,
        classes=classes,
        classes_below_quota=[],
        manifest=manifest,
    )
    write_json_atomic(run.selection, selection.as_json)
