"""Confusion matrices of the student against the teacher on the held-out field slice, and against labels when the
run had a labeled --val folder. Computed by running the real student checkpoint and the teacher (no stored logits),
so the matrix always matches the student.pt that ships.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from eikd_edge.checkpoint import StudentCheckpoint
from eikd_edge.export.fieldset import run_field_images
from eikd_edge.export.parity import MAX_IMAGES, reference_outputs
from eikd_edge.run import RunPaths, read_resolved
from eikd_edge.runtime import TorchPredictor

MAX_CLASSES = 30  # beyond this a matrix is unreadable: keep the most frequent classes and fold the rest into "other"


class Confusion(BaseModel):
    """counts[i][j]: images whose reference class is classes[i] and student prediction classes[j]."""

    model_config = ConfigDict(extra="forbid")
    title: str
    reference: str  # "teacher" or "label"
    images: str  # where the images came from
    classes: list[str]
    counts: list[list[int]]
    n: int
    agreement: float  # diagonal / n: teacher agreement or true top-1


class ConfusionSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    matrices: list[Confusion]
    notes: list[str] = []


def confusion(
    reference: np.ndarray, predicted: np.ndarray, classes: list[str], title: str, kind: str, images: str
) -> Confusion:
    """Counts from two label vectors; more than MAX_CLASSES classes are folded into "other" (the rarest ones)."""
    n_cls = len(classes)
    counts = np.zeros((n_cls, n_cls), dtype=np.int64)
    np.add.at(counts, (reference, predicted), 1)
    names = list(classes)
    if n_cls > MAX_CLASSES:
        keep = np.sort(np.argsort(-(counts.sum(0) + counts.sum(1)), kind="stable")[: MAX_CLASSES - 1])
        index = np.full(n_cls, MAX_CLASSES - 1)
        index[keep] = np.arange(len(keep))
        folded = np.zeros((MAX_CLASSES, MAX_CLASSES), dtype=np.int64)
        np.add.at(folded, (index[reference], index[predicted]), 1)
        counts, names = folded, [classes[i] for i in keep] + ["other"]
    total = len(reference)
    agreement = float((reference == predicted).mean()) if total else 0.0
    return Confusion(
        title=title,
        reference=kind,
        images=images,
        classes=names,
        counts=counts.tolist(),
        n=total,
        agreement=agreement,
    )


def build_confusion(run: RunPaths, ckpt: StudentCheckpoint, trust_pickle: bool = False) -> ConfusionSection:
    """Student vs teacher on the holdout slice; student vs labels on the recipe's inputs.val when it still exists."""
    notes: list[str] = []
    images = run_field_images(run, ckpt.spec, "parity", MAX_IMAGES)
    val_dir = _val_dir(run, notes)
    ref = reference_outputs(run, ckpt, images, val_dir, trust_pickle)
    notes += ref.notes
    classes = list(ckpt.spec.classes)
    matrices = []
    student_top = ref.student.argmax(1)
    if ref.teacher is not None:
        where = f"{len(images)} {images.source} field images"
        matrices.append(confusion(ref.teacher.argmax(1), student_top, classes, "Student vs teacher", "teacher", where))
    if ref.val is not None:
        val_images, labels = ref.val
        predicted = TorchPredictor(ckpt.model, ckpt.spec).predict_logits(val_images).argmax(1)
        where = f"{len(labels)} labeled images ({val_dir.name if val_dir else 'val'})"
        matrices.append(confusion(labels, predicted, classes, "Student vs labels", "label", where))
    return ConfusionSection(matrices=matrices, notes=notes)


def _val_dir(run: RunPaths, notes: list[str]) -> Path | None:
    val = (read_resolved(run).get("inputs") or {}).get("val")
    if not val:
        return None
    if not Path(val).is_dir():
        notes.append(f"the run's labeled folder {val} is gone: no confusion matrix against labels")
        return None
    return Path(val)
