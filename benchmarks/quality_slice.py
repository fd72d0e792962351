"""The fixed agreement slice: one share of the field pool, drawn once before anything trains, held out of every
run's training pool, labelled by the teacher, and scored for every method and seed alike."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.task_common import read_truth
from benchmarks.tasks import Task
from eikd_edge.data import DecodeReport, iter_decoded, normalize, scan_images
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import load_teacher

SLICE_SEED = 0  # the same slice for every method and every training seed


@dataclass(frozen=True)
class FieldSlice:
    paths: list[str]  # relative to the task's field folder
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # the teacher's top-1 class per image
    truth: list[dict[str, str]]  # field_truth.csv rows of the images (kind, label)
    spec: InputSpec
    fraction: float

    @property
    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.truth:
            counts[row["kind"]] = counts.get(row["kind"], 0) + 1
        return counts

    @torch.inference_mode()
    def predict(self, model: nn.Module) -> torch.Tensor:
        model.eval()
        batches = [model(normalize(self.images[i : i + 512], self.spec)) for i in range(0, len(self.images), 512)]
        return torch.cat(batches).argmax(1)

    def _in_class_top1(self, predicted: torch.Tensor) -> float | None:
        rows = [(i, r["label"]) for i, r in enumerate(self.truth) if r["kind"] == "in-class"]
        if not rows:
            return None
        hits = sum(int(predicted[i]) == self.spec.classes.index(label) for i, label in rows)
        return hits / len(rows)

    def score(self, student: nn.Module) -> dict[str, Any]:
        """Agreement with the teacher on the slice, and true top-1 on its in-class images (the field domain)."""
        predicted = self.predict(student)
        return {
            "slice_agreement": float((predicted == self.labels).float().mean()),
            "slice_in_class_top1": self._in_class_top1(predicted),
        }

    def teacher_scores(self) -> dict[str, Any]:
        return {"slice_agreement": 1.0, "slice_in_class_top1": self._in_class_top1(self.labels)}

    def describe(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "seed": SLICE_SEED, "size": len(self.paths), "kinds": self.kinds}


def split_field(task: Task, train_folder: Path, fraction: float) -> tuple[Path, FieldSlice]:
    """Copy all but a fixed `fraction` of the field files into `train_folder`; return it and the slice."""
    files = [p.relative_to(task.field).as_posix() for p in scan_images(task.field)]
    chosen = set(random.Random(SLICE_SEED).sample(files, round(fraction * len(files))))
    shutil.rmtree(train_folder, ignore_errors=True)
    for name in files:
        if name not in chosen:
            target = train_folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(task.field / name, target)
    teacher = load_teacher(task.teacher)
    names = sorted(chosen)
    batches = list(iter_decoded([task.field / n for n in names], teacher.spec, 512, DecodeReport()))
    kept = [names[i] for b in batches for i in b.indices]
    images = torch.cat([b.images for b in batches])
    labels = torch.cat([teacher.predict(normalize(b.images, teacher.spec))[0].argmax(1) for b in batches])
    truth_by_path = {row["path"]: row for row in read_truth(task.truth)}
    truth = [truth_by_path.get(n, {"kind": "unknown", "label": ""}) for n in kept]
    return train_folder, FieldSlice(kept, images, labels, truth, teacher.spec, fraction)
