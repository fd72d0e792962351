"""The benchmark tasks (benchmarks/tasks.py), built tiny with an untrained teacher: structure and leak checks,
and the quality harness's plumbing (fixed slice, the at-defaults recipe, the plain-KD reference) on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import task_mnist, task_photos
from benchmarks.plain_kd import plain_kd
from benchmarks.quality import plan
from benchmarks.quality_slice import split_field
from benchmarks.task_common import KINDS, pixel_hash, read_truth
from benchmarks.tasks import TASKS, Task, build_task
from eikd_edge.data import scan_images
from eikd_edge.models.teacher import load_teacher
from eikd_edge.models.zoo import build_model

TINY = 0.01


@pytest.fixture(scope="module", params=TASKS)
def task(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Task:
    return build_task(request.param, tmp_path_factory.mktemp(request.param), TINY, teacher_epochs=0, score=False)


def _hashes(paths: list[Path]) -> set[str]:
    hashes = set()
    for path in paths:
        with Image.open(path) as image:
            hashes.add(pixel_hash(np.asarray(image.convert("RGB"))))
    return hashes


def test_field_pool_holds_no_image_of_the_teachers_train_or_val_set(task: Task) -> None:
    field, seen = scan_images(task.field), scan_images(task.train) + scan_images(task.val)
    assert field and seen
    assert not _hashes(field) & _hashes(seen)


def test_truth_describes_every_field_file(task: Task) -> None:
    rows = read_truth(task.truth)
    files = sorted(p.relative_to(task.field).as_posix() for p in scan_images(task.field))
    assert sorted(r["path"] for r in rows) == files
    assert {r["kind"] for r in rows} <= set(KINDS)
    assert all(r["label"] in task.classes for r in rows if r["kind"] == "in-class")
    assert all(r["label"] == "" for r in rows if r["kind"] != "in-class")
    assert {"in-class", "distractor"} <= {r["kind"] for r in rows}


def test_every_class_is_in_val_and_the_sidecar_loads(task: Task) -> None:
    teacher = load_teacher(task.teacher)
    assert list(teacher.spec.classes) == task.classes
    assert teacher.spec.input_size == (32, 32)
    assert teacher.num_classes == len(task.classes)
    folders = {d.name: scan_images(d) for d in task.val.iterdir() if d.is_dir()}
    assert set(folders) == set(task.classes)
    assert all(folders.values())


def test_mnist_real_field_is_at_least_a_third_distractors_and_no_mnist_at_all(task: Task) -> None:
    if task.name != "mnist-real":
        pytest.skip("mnist-real only")
    rows = read_truth(task.truth)
    assert 3 * sum(r["kind"] == "distractor" for r in rows) >= len(rows)
    assert 3 * sum(task_mnist.FIELD_MIX[k] for k, v in task_mnist.KIND.items() if v == "distractor") >= 1
    images, _ = task_mnist.mnist()
    assert not _hashes(scan_images(task.field)) & {pixel_hash(np.repeat(i[..., None], 3, 2)) for i in images}


def test_natural_photos_field_comes_from_the_other_half_of_each_class_photo(task: Task) -> None:
    if task.name != "natural-photos":
        pytest.skip("natural-photos only")
    rows = [r for r in read_truth(task.truth) if r["kind"] == "in-class"]
    assert rows
    for row in rows:
        _top, left, _side = map(int, row["box"].split(","))
        assert left >= task_photos.photo(row["label"]).shape[1] // 2, row


def test_defaults_rows_set_nothing_but_the_method() -> None:
    runs = plan(["eikd", "kd"], ablations=True, steps=60, defaults=True)
    defaults = {row: overrides for row, mode, overrides in runs if mode == "defaults"}
    assert defaults["eikd"] == ["method=eikd"] and defaults["kd"] == ["method=kd"]
    assert all(o[-1] == "train.steps=60" for _, mode, o in runs if mode != "defaults")
    assert runs[0][:2] == ("eikd", "defaults")
    ablations = [(row, mode) for row, mode, _ in runs if row.startswith("eikd w/o")]
    assert len(ablations) == 4 and {mode for _, mode in ablations} == {"60 steps"}


def test_neighbouring_rows_set_their_mode_on_top_of_each_budget() -> None:
    runs = plan(["eikd"], ablations=False, steps=60, defaults=True, neighbours=True)
    rows = {(row, mode): overrides for row, mode, overrides in runs}
    assert rows[("odsd sampling", "defaults")] == ["selection.sampler=odsd", "loss.relation.kind=kl"]
    assert rows[("kd, self-paced curriculum", "60 steps")] == ["method=kd", "train.curriculum.mode=selfpaced",
                                                                "train.steps=60"]  # fmt: skip
    assert len([r for r in rows if r[0] != "eikd"]) == 10


def test_agreement_slice_is_fixed_and_never_trained_on(task: Task, tmp_path: Path) -> None:
    if task.name != "natural-photos":
        pytest.skip("one task is enough")
    folder, cut = split_field(task, tmp_path / "a", 0.2)
    _, again = split_field(task, tmp_path / "b", 0.2)
    trained = {p.relative_to(folder).as_posix() for p in scan_images(folder)}
    assert cut.paths == again.paths and cut.paths
    assert not trained & set(cut.paths)
    assert len(trained) + len(cut.paths) == len(scan_images(task.field))
    student = build_model("cifar_resnet8", len(task.classes))
    assert 0.0 <= cut.score(student)["slice_agreement"] <= 1.0


def test_plain_kd_reference_trains_on_the_whole_pool_and_records_each_epoch(task: Task) -> None:
    if task.name != "mnist-real":
        pytest.skip("one task is enough")
    metrics, student = plain_kd(task.teacher, task.field, task.val, seed=0, flip=False, epochs=2)
    assert metrics["train"]["images"] == len(scan_images(task.field))
    assert metrics["train"]["steps"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["student"]["top1"] == metrics["history"][-1]["val_top1"]
    torch.manual_seed(0)  # plain_kd seeds the student's initialisation the same way
    initial = build_model("cifar_resnet8", len(task.classes))
    assert not torch.equal(student.state_dict()["fc.weight"], initial.state_dict()["fc.weight"])
