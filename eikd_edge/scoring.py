"""The teacher's one pass over the unlabeled pool: logits and embeddings, streamed, sharded, cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from eikd_edge import score_cache
from eikd_edge.data import DecodeReport, display_name, iter_decoded, normalize, scan_images
from eikd_edge.distributed import DistContext, gather_objects, shard_range
from eikd_edge.errors import EikdError
from eikd_edge.file_stats import hash_file_stats
from eikd_edge.models.bn_stats import BatchNormDeviation, batchnorm_layers
from eikd_edge.models.teacher import TeacherModel
from eikd_edge.pool_cache import read_cache, read_shared, write_cache, write_shared
from eikd_edge.pool_scores import PoolScores
from eikd_edge.ui import progress_bar, show_progress

BATCH_BYTES = 512 << 20  # the normalised float batch the teacher sees; decoded uint8 batches are a quarter of it


def scoring_batch(requested: int, input_size: tuple[int, int]) -> int:
    """The requested batch, shrunk so one float batch (batch x 3 x H x W x 4 bytes) stays within BATCH_BYTES:
    256 images of 4096x4096 would be 51 GB; the budget makes it 2 (the teacher's outputs are the same)."""
    per_image = 3 * input_size[0] * input_size[1] * 4
    return max(1, min(requested, BATCH_BYTES // per_image))


def folder_fingerprint(root: Path, paths: list[Path]) -> str:
    """The pool as a set of files: its absolute root and every file's relative path, size and mtime.

    The root is part of it, so a folder that moved (or a different one with the same names) is a different pool.
    """
    digest = hashlib.sha256()
    digest.update(os.fsencode(Path(root).resolve()) + b"\n")
    hash_file_stats(digest, paths, lambda path: path.relative_to(root).as_posix())
    return digest.hexdigest()


@dataclass(frozen=True)
class FolderScan:
    """A pool folder walked once: its image files and their fingerprint, handed on so the scoring pass does not
    walk and stat a large pool a second time."""

    root: Path
    paths: list[Path]
    fingerprint: str


def scan_folder(root: Path, exclude: tuple[Path, ...] = ()) -> FolderScan:
    root = Path(os.path.abspath(root))
    paths = scan_images(root, exclude)
    return FolderScan(root, paths, folder_fingerprint(root, paths))


def pool_fingerprint(folder: str, teacher: TeacherModel) -> str:
    """Changes when the folder, any file, the teacher or its input spec changes, so a stale cache is never reused."""
    digest = hashlib.sha256()
    digest.update(teacher.sha256.encode())
    digest.update(json.dumps(teacher.spec.to_dict(), sort_keys=True).encode())
    digest.update(folder.encode())
    return digest.hexdigest()


def score_pool(
    teacher: TeacherModel,
    root: Path,
    device: torch.device,
    batch_size: int = 256,
    cache: Path | None = None,
    ctx: DistContext | None = None,
    bn_deviation: bool = False,
    exclude: tuple[Path, ...] = (),
    scan: FolderScan | None = None,
    workers: int | None = None,
    shared: Path | None = None,
) -> PoolScores:
    """Run the teacher once over the pool (this rank's shard), reuse a matching cache, gather across ranks.

    With `bn_deviation`, the same pass also measures each image's distance to the teacher's BatchNorm statistics.
    `exclude`: folders under the root not to walk (the run folder being written, when it sits in the pool).
    `scan`: the same folder already walked (by the input checks), reused instead of walking it again.
    `workers`: image decoding threads (None: the decoder's default).
    `shared`: a cache folder other runs read too (score_cache.py), tried after the run's own `cache`; None: off.
    """
    ctx = ctx or DistContext()
    root = Path(os.path.abspath(root))  # selection.json records it: later commands may run from anywhere
    if scan is None or scan.root != root:
        scan = scan_folder(root, exclude)
    paths = scan.paths
    if not paths:
        raise EikdError(f"no images found in {root} (looked for jpg, jpeg, png, webp, bmp, tif, tiff)")
    fingerprint = pool_fingerprint(scan.fingerprint, teacher)
    want_bn = bn_deviation and bool(batchnorm_layers(teacher.module))
    cached = read_cache(cache, fingerprint, root)
    if cached is not None and (cached.bn_deviation is not None or not want_bn):
        if shared is not None and ctx.is_main and not score_cache.entry_path(shared, fingerprint).exists():
            write_shared(shared, fingerprint, cached)
        return cached
    expected = _expected(fingerprint, scan, teacher)
    reused = read_shared(shared, expected, root, want_bn, ctx)
    if reused is not None:
        if cache is not None and ctx.is_main:
            write_cache(cache, fingerprint, reused)
        return reused
    scores = _score_pass(teacher, root, paths, device, batch_size, ctx, want_bn, workers)
    if cache is not None and ctx.is_main:
        write_cache(cache, fingerprint, scores)
    if shared is not None and ctx.is_main:
        write_shared(shared, fingerprint, scores)
    return scores


def _score_pass(
    teacher: TeacherModel,
    root: Path,
    paths: list[Path],
    device: torch.device,
    batch_size: int,
    ctx: DistContext,
    want_bn: bool,
    workers: int | None,
) -> PoolScores:
    """The teacher's pass over the pool: each rank scores its shard, the shards are gathered in scan order."""
    import time

    started = time.perf_counter()
    start, end = shard_range(len(paths), ctx)
    batch_size = scoring_batch(batch_size, teacher.spec.input_size)
    shard = _score_shard(teacher, paths[start:end], root, device, batch_size, ctx, start, want_bn, workers)
    parts = gather_objects(shard, ctx)
    indices = [i for part in parts for i in part[0]]
    logits = torch.cat([part[1] for part in parts])
    embeddings = torch.cat([part[2] for part in parts])
    deviation = torch.cat([part[4] for part in parts]) if want_bn else None
    report = DecodeReport()
    for part in parts:
        report.skipped.extend(part[3].skipped)
    if not indices:
        raise EikdError(f"none of the {len(paths)} image files in {root} could be read ({_top_reason(report)})")
    scores = PoolScores(
        root=root,
        paths=[paths[i].relative_to(root).as_posix() for i in indices],
        logits=logits,
        embeddings=embeddings,
        files=len(paths),
        skipped=report.summary(),
        seconds=time.perf_counter() - started,
        from_cache=False,
        bn_deviation=deviation,
    )
    return scores


def _expected(fingerprint: str, scan: FolderScan, teacher: TeacherModel) -> score_cache.Expected:
    pool_paths = [p.relative_to(scan.root).as_posix() for p in scan.paths]
    return score_cache.Expected(
        fingerprint, pool_paths, teacher.num_classes, teacher.embedding_dim or teacher.num_classes
    )


def _score_shard(
    teacher: TeacherModel,
    paths: list[Path],
    root: Path,
    device: torch.device,
    batch_size: int,
    ctx: DistContext,
    offset: int,
    want_bn: bool,
    workers: int | None = None,
) -> tuple[list[int], torch.Tensor, torch.Tensor, DecodeReport, torch.Tensor]:
    import time

    report = DecodeReport()
    indices: list[int] = []
    # Filled in place: appending small per-batch tensors between the large transient ones (decoded and normalised
    # batches, activations) fragments the heap, and RSS then creeps up with the pool size for nothing.
    width = teacher.embedding_dim or teacher.num_classes
    logits = torch.empty(len(paths), teacher.num_classes)
    embeddings = torch.empty(len(paths), width)
    deviation = torch.empty(len(paths))
    taps = BatchNormDeviation(teacher.module) if want_bn else None
    count = 0
    started = time.perf_counter()
    with progress_bar(disable=not show_progress(ctx.is_main)) as bar:
        task = bar.add_task("Scoring pool with the teacher", total=len(paths) * ctx.world_size, rate="")
        done = 0
        for batch in iter_decoded(paths, teacher.spec, batch_size, report, root, workers):
            images = normalize(batch.images.to(device, non_blocking=True), teacher.spec)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                batch_logits, batch_embeddings = teacher.predict(images)
            _check_finite(teacher, batch_logits, batch_embeddings, [paths[i] for i in batch.indices], root)
            n = len(batch.indices)
            logits[count : count + n].copy_(batch_logits)
            embeddings[count : count + n].copy_(batch_embeddings)
            if taps is not None:
                deviation[count : count + n].copy_(taps.pop())
            count += n
            indices.extend(offset + i for i in batch.indices)
            done = batch.indices[-1] + 1
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=done * ctx.world_size, rate=f"{rate * ctx.world_size:,.0f} img/s")
        bar.update(task, completed=len(paths) * ctx.world_size)
    if taps is not None:
        taps.remove()
    if count < len(paths):  # skipped files: copy out the filled rows (a view would drag the whole buffer along)
        logits, embeddings, deviation = logits[:count].clone(), embeddings[:count].clone(), deviation[:count].clone()
    return indices, logits, embeddings, report, deviation


def _check_finite(
    teacher: TeacherModel, logits: torch.Tensor, embeddings: torch.Tensor, paths: list[Path], root: Path
) -> None:
    """A teacher that returns NaN/Inf on real images would poison selection and training: stop with its name."""
    bad = ~(torch.isfinite(logits).all(dim=1) & torch.isfinite(embeddings).all(dim=1))
    if not bool(bad.any()):
        return
    first = paths[int(bad.nonzero()[0, 0])]
    try:
        shown = first.relative_to(root).as_posix()
    except ValueError:
        shown = str(first)
    raise EikdError(
        f"teacher {teacher.path.name} returned NaN or Inf on {int(bad.sum())} of {len(paths)} images in a batch "
        f"(first: {display_name(shown)}); check its weights and the mean/std/input size in its spec"
    )


def _top_reason(report: DecodeReport) -> str:
    reasons = report.summary()["by_reason"]
    assert isinstance(reasons, dict)
    if not reasons:
        return "no reason recorded"
    reason, count = max(reasons.items(), key=lambda item: item[1])
    return f"most common: {reason}, {count} files"
