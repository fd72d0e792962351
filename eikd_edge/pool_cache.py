"""Where a pool's teacher scores are kept between runs, apart from the pass that computes them: the run's own
file (RUN/teacher_outputs.pt, trusted only with a matching fingerprint) and the shared cache folder's entries
(score_cache.py: checked against the pool and the teacher; a bad entry is a note, never an error)."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.markup import escape

from eikd_edge import score_cache
from eikd_edge.checkpoint import save_torch_atomic
from eikd_edge.console import err_console
from eikd_edge.distributed import DistContext
from eikd_edge.pool_scores import PoolScores


def read_shared(
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


def write_shared(shared: Path, fingerprint: str, scores: PoolScores) -> None:
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


def read_cache(cache: Path | None, fingerprint: str, root: Path) -> PoolScores | None:
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


def write_cache(cache: Path, fingerprint: str, scores: PoolScores) -> None:
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
