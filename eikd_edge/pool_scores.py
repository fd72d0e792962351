"""The teacher's scores of a pool, as every later stage reads them (selection, training, the summaries), apart from
the pass that computes them (scoring.py) and the files that keep them (pool_cache.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


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
