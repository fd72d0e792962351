"""The teacher's one pass over the unlabeled pool: logits and embeddings, streamed, sharded, cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from eikd_edge import score_cache
from eikd_edge.checkpoint import save_torch_atomic
from eikd_edge.console import err_console
from eikd_edge.data import DecodeReport, display_name, iter_decoded, normalize, scan_images
from eikd_edge.distributed import DistContext, gather_objects, shard_range
from eikd_edge.errors import EikdError
from eikd_edge.file_stats import hash_file_stats
from eikd_edge.models.bn_stats import BatchNormDeviation, batchnorm_layers
from eikd_edge.models.teacher import TeacherModel
from eikd_edge.ui import progress_bar, show_progress


@dataclass(frozen=True)
class PoolScores:
    """Teacher outputs for every decodable pool image, in scan order."""

    root: Path
    paths: list[str]  # relative to root, only the images that decoded
    logits: torch.Tensor  # float32 [N, C]
    embeddings: torch.Tensor  # float32 [N, D]
    files: int  # image files found, decodable or not
    skipped: dict[str, object]
    seconds: float
    from_cache: bool
    bn_deviation: torch.Tensor | None = None  # float32 [N]; set when asked for and the teacher has BatchNorm layers


def merge_pools(first: PoolScores, second: PoolScores) -> PoolScores:
    """One pool from two folders (field images and synthetic ones): paths become relative to their common root."""
    root = Path(os.path.commonpath([first.root.resolve(), second.root.resolve()]))

    def rebase(pool: PoolScores) -> list[str]:
        prefix = pool.root.resolve().relative_to(root)
        return [(prefix / p).as_posix() for p in pool.paths]

    deviations = [first.bn_deviation, second.bn_deviation]
    return PoolScores(
        root=root,
        paths=rebase(first) + rebase(second),
        logits=torch.cat([first.logits, second.logits]),
        embeddings=torch.cat([first.embeddings, second.embeddings]),
        files=first.files + second.files,
        skipped=_merge_skipped(first.skipped, second.skipped),
        seconds=first.seconds + second.seconds,
        from_cache=first.from_cache and second.from_cache,
        bn_deviation=torch.cat(deviations) if all(d is not None for d in deviations) else None,  # type: ignore[misc]
    )


def _merge_skipped(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Add up two DecodeReport summaries."""
    reasons = dict(a.get("by_reason", {}))
    for reason, n in b.get("by_reason", {}).items():
        reasons[reason] = reasons.get(reason, 0) + n
    sample = [*a.get("sample", []), *b.get("sample", [])][:20]
    return {"count": int(a.get("count", 0)) + int(b.get("count", 0)), "by_reason": reasons, "sample": sample}


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
    import time

    ctx = ctx or DistContext()
    root = Path(os.path.abspath(root))  # selection.json records it: later commands may run from anywhere
    if scan is None or scan.root != root:
        scan = scan_folder(root, exclude)
    paths = scan.paths
    if not paths:
        raise EikdError(f"no images found in {root} (looked for jpg, jpeg, png, webp, bmp, tif, tiff)")
    fingerprint = pool_fingerprint(scan.fingerprint, teacher)
    want_bn = bn_deviation and bool(batchnorm_layers(teacher.module))
    cached = _read_cache(cache, fingerprint, root)
    if cached is not None and (cached.bn_deviation is not None or not want_bn):
        if shared is not None and ctx.is_main and not score_cache.entry_path(shared, fingerprint).exists():
            _write_shared(shared, fingerprint, cached)
        return cached
    expected = _expected(fingerprint, scan, teacher)
    reused = _read_shared(shared, expected, root, want_bn, ctx)
    if reused is not None:
        if cache is not None and ctx.is_main:
            _write_cache(cache, fingerprint, reused)
        return reused
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
    if cache is not None and ctx.is_main:
        _write_cache(cache, fingerprint, scores)
    if shared is not None and ctx.is_main:
        _write_shared(shared, fingerprint, scores)
    return scores


def _expected(fingerprint: str, scan: FolderScan, teacher: TeacherModel) -> score_cache.Expected:
    pool_paths = [p.relative_to(scan.root).as_posix() for p in scan.paths]
    return score_cache.Expected(
        fingerprint, pool_paths, teacher.num_classes, teacher.embedding_dim or teacher.num_classes
    )


def _read_shared(
    shared: Path | None, expected: score_cache.Expected, root: Path, want_bn: bool, ctx: DistContext
) -> PoolScores | None:
    """The shared cache's scores for this teacher and pool, or None (score it): a missing entry silently, an
    untrustworthy one (damaged, tampered, another pool's) with a note; never an error."""
    if shared is None:
        return None
    entry = score_cache.entry_path(shared, expected.key)
    try:
        found = score_cache.read_entry(entry, expected)
    except score_cache.BadEntry as exc:
        if ctx.is_main:
            _note(f"ignored the cached teacher scores in {entry} ({exc}); scoring the pool again")
        return None
    if found is None or (want_bn and found.bn_deviation is None):
        return None
    if ctx.is_main:
        err_console.print(
            f"teacher scores: reused from {escape(str(entry))} ({len(found.paths):,} images)",
            highlight=False,
            soft_wrap=True,
        )
    return PoolScores(
        root=root,
        paths=found.paths,
        logits=found.logits,
        embeddings=found.embeddings,
        files=found.files,
        skipped=found.skipped,
        seconds=0.0,
        from_cache=True,
        bn_deviation=found.bn_deviation,
    )


def _write_shared(shared: Path, fingerprint: str, scores: PoolScores) -> None:
    """Best effort: a cache folder that is read-only or full costs the next run a scoring pass, not this run."""
    entry = score_cache.entry_path(shared, fingerprint)
    cached = score_cache.CachedScores(
        scores.paths, scores.logits, scores.embeddings, scores.bn_deviation, scores.files, dict(scores.skipped)
    )
    try:
        score_cache.write_entry(entry, fingerprint, cached)
    except OSError as exc:
        _note(f"could not save the teacher scores to {entry} ({exc.strerror or exc}); later runs will score again")


def _note(text: str) -> None:
    err_console.print(f"[yellow]note:[/] {escape(text)}", highlight=False, soft_wrap=True)


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


def _read_cache(cache: Path | None, fingerprint: str, root: Path) -> PoolScores | None:
    """The cached scores, or None (recompute) when the file is missing, stale, damaged or not ours."""
    if cache is None or not cache.is_file():
        return None
    try:
        data = torch.load(cache, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is simply recomputed
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint or not isinstance(data.get("paths"), list):
        return None
    try:
        scores = PoolScores(
            root=root,
            paths=[str(p) for p in data["paths"]],
            logits=data["logits"],
            embeddings=data["embeddings"],
            files=int(data["files"]),
            skipped=dict(data["skipped"]),
            seconds=0.0,
            from_cache=True,
            bn_deviation=data.get("bn_deviation"),
        )
    except (KeyError, TypeError, ValueError):
        return None
    rows = len(scores.paths)
    tensors = [scores.logits, scores.embeddings] + ([scores.bn_deviation] if scores.bn_deviation is not None else [])
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == rows for t in tensors):
        return None
    return scores


def _write_cache(cache: Path, fingerprint: str, scores: PoolScores) -> None:
    save_torch_atomic(
        cache,
        {
            "fingerprint": fingerprint,
            "root": str(scores.root),
            "paths": scores.paths,
            "logits": scores.logits,
            "embeddings": scores.embeddings,
            "files": scores.files,
            "skipped": scores.skipped,
            "bn_deviation": scores.bn_deviation,
        },
    )
