"""Real field images for calibration and parity, taken from the run's selection manifest (never random tensors)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eikd_edge.data import DecodeReport, confined, iter_decoded, scan_images
from eikd_edge.errors import EikdError
from eikd_edge.models.spec import InputSpec
from eikd_edge.run import RunPaths
from eikd_edge.run_files import read_selection
from eikd_edge.runfolder import read_marker

PARITY_SOURCE = "field pool (gate split)"
TUNING_SHARE = 4  # one pool image in four tunes INT8 (calibration, sensitivity), the others grade it


@dataclass(frozen=True)
class FieldImages:
    """Decoded uint8 NCHW images, where they came from, and the teacher's predicted class when known."""

    images: torch.Tensor
    paths: list[str]
    source: str
    predicted: list[str | None]
    skipped: int = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])


def read_manifest(run: RunPaths) -> tuple[Path, list[dict[str, Any]]]:
    """The pool root and the manifest entries of selection.json; every entry's path stays inside the root."""
    selection = read_selection(run)
    root = selection.pool.root if selection.pool else None
    if not root or selection.manifest is None:
        raise EikdError(f"{run.selection} has no pool.root or manifest; re-run `eikd-edge select`/`distill`")
    for entry in selection.manifest:
        confined(Path(root), entry.path)
    return absolute_root(run, Path(root)), [entry.model_dump(exclude_unset=True) for entry in selection.manifest]


def absolute_root(run: RunPaths, root: Path) -> Path:
    """Runs record the pool root absolute; an older run's relative root is taken from its recorded --unlabeled."""
    if root.is_absolute():
        return root
    inputs = (read_marker(run.root) or {}).get("inputs")
    unlabeled = inputs.get("unlabeled") if isinstance(inputs, dict) else None
    return Path(unlabeled) if isinstance(unlabeled, str) and Path(unlabeled).is_absolute() else root


def stratified(entries: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Round-robin over predicted classes (best score first within each) so every class is represented."""
    if len(entries) <= limit:
        return list(entries)
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        by_class[str(entry.get("predicted"))].append(entry)
    queues = [sorted(v, key=lambda e: -float(e.get("score") or 0.0)) for _, v in sorted(by_class.items())]
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < limit:
        for queue in queues:
            if depth < len(queue) and len(picked) < limit:
                picked.append(queue[depth])
        depth += 1
    return picked


def is_tuning(entry: dict[str, Any]) -> bool:
    """A fixed quarter of the pool (by a hash of the path, so export and validate agree) that INT8 calibration and
    the layer-sensitivity search may look at; the gate is measured on the other three quarters only, so nothing
    that chose the quantization also grades it."""
    digest = hashlib.sha256(str(entry["path"]).encode("utf-8", "surrogateescape")).digest()
    return digest[0] % TUNING_SHARE == 0


def calibration_entries(entries: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The tuning quarter of the scored pool, stratified by predicted class: what the device will see (distractors
    included), not only the confident images the student trained on. All entries when the quarter is empty."""
    tuning = [e for e in entries if is_tuning(e)]
    return stratified(tuning or entries, limit)


def parity_entries(entries: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], str]:
    """The rest of the scored pool, selected or not (thousands, not the few hundred held out, so one flip no longer
    decides a 99% gate; parity is label-free, so any field image will do). Every image when the pool is tiny."""
    rest = [e for e in entries if not is_tuning(e)]
    if rest:
        return stratified(rest, limit), PARITY_SOURCE
    return stratified(entries, limit), "pool"


def decode_entries(
    root: Path, entries: list[dict[str, Any]], spec: InputSpec, source: str, run: RunPaths
) -> FieldImages:
    if not entries:
        raise EikdError(f"{run.selection} lists no {source} images; pass --images DIR")
    if not root.is_dir():
        raise EikdError(f"the run's field-image folder {root} is gone (run moved?); pass --images DIR")
    paths = [confined(root, str(e["path"])) for e in entries]
    images, kept = _decode(paths, spec, root, source)
    return FieldImages(
        images,
        [str(entries[i]["path"]) for i in kept],
        source,
        [entries[i].get("predicted") for i in kept],
        len(entries) - len(kept),
    )


def run_field_images(run: RunPaths, spec: InputSpec, purpose: str, limit: int) -> FieldImages:
    """`purpose` is "calibration" (the pool's tuning quarter) or "parity" (the other three quarters)."""
    root, entries = read_manifest(run)
    if purpose == "calibration":
        return decode_entries(root, calibration_entries(entries, limit), spec, "tuning", run)
    chosen, source = parity_entries(entries, limit)
    return decode_entries(root, chosen, spec, source, run)


def folder_images(folder: Path, spec: InputSpec, limit: int) -> FieldImages:
    """Every image under a folder (evenly thinned to `limit`), e.g. for `validate --images DIR`."""
    paths = scan_images(folder)
    if not paths:
        raise EikdError(f"no images found under {folder}")
    if len(paths) > limit:
        step = len(paths) / limit
        paths = [paths[int(i * step)] for i in range(limit)]
    images, kept = _decode(paths, spec, folder, str(folder))
    return FieldImages(
        images,
        [paths[i].relative_to(folder).as_posix() for i in kept],
        f"folder {folder}",
        [None] * len(kept),
        len(paths) - len(kept),
    )


def _decode(paths: list[Path], spec: InputSpec, root: Path, what: str) -> tuple[torch.Tensor, list[int]]:
    report = DecodeReport()
    batches = list(iter_decoded(paths, spec, 256, report, root))
    if not batches:
        raise EikdError(f"none of the {len(paths)} {what} images could be decoded (e.g. {report.summary(3)})")
    kept = [i for batch in batches for i in batch.indices]
    return torch.cat([b.images for b in batches]), kept
