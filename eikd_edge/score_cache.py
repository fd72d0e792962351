"""A cache of the teacher's pass over a pool shared between runs, so trying three students costs one scoring pass.

An entry is one `.npz` file (plain arrays, no pickle) named by the in-run cache's fingerprint: the teacher file's
sha256, its input spec (size, mean/std, resize policy) and the pool (absolute root, every file's path, size and
mtime). The folder may be shared with other users, so an entry is read as a hostile file: its size is bounded by the
pool before it is opened, arrays load with `allow_pickle=False`, and names, shapes, dtypes, finiteness and paths are
checked against the pool and the teacher. Anything that does not fit is ignored with a note and scored again.
Entries are written with `write_atomic` (temp file + rename), so two runs writing the same entry leave one whole.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from eikd_edge.atomic import write_atomic

FORMAT = "eikd-edge teacher scores 1"
SUBFOLDER = "teacher-scores"
_ARRAYS = ("logits", "embeddings", "bn_deviation")
_META_BYTES_PER_FILE = 4096  # a relative path in JSON, generously; bounds the meta array before it is read
_SLACK = 1 << 20  # npy/zip headers and the skipped-files summary


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/eikd-edge, else ~/.cache/eikd-edge (the XDG base-directory convention)."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "eikd-edge"


def entry_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / SUBFOLDER / f"{key}.npz"


@dataclass(frozen=True)
class Expected:
    """What the pool and the teacher say an entry must hold."""

    key: str
    pool_paths: list[str]  # every image file of the pool, relative, in scan order
    num_classes: int
    width: int  # embedding width

    def max_bytes(self) -> int:
        rows = len(self.pool_paths)
        return rows * (self.num_classes + self.width + 1) * 4 + rows * _META_BYTES_PER_FILE + _SLACK


@dataclass(frozen=True)
class CachedScores:
    paths: list[str]
    logits: torch.Tensor
    embeddings: torch.Tensor
    bn_deviation: torch.Tensor | None
    files: int
    skipped: dict[str, Any]


class BadEntry(Exception):
    """An entry that is not what the pool and teacher say it must be; the message says why, for the note."""


def read_entry(path: Path, expected: Expected) -> CachedScores | None:
    """The entry's scores; None when there is none; BadEntry when there is one that cannot be trusted."""
    try:
        if not path.exists() and not path.is_symlink():
            return None
        if not path.is_file():  # a FIFO or device would block or never end
            raise BadEntry("not a regular file")
        handle = open(path, "rb")  # noqa: SIM115 - one open file: a writer replacing the entry cannot mix versions
    except OSError as exc:
        raise BadEntry(f"unreadable: {exc.strerror or exc}") from exc
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > expected.max_bytes():
            raise BadEntry(f"{size:,} bytes, more than this pool's scores can take")
        try:
            return _check(_load_arrays(handle, expected), expected)
        except BadEntry:
            raise
        except Exception as exc:  # a damaged zip, npy header or JSON; an object array refused by allow_pickle=False
            raise BadEntry(f"not a valid score file ({type(exc).__name__})") from exc


def _load_arrays(handle: BinaryIO, expected: Expected) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(handle) as archive:
        infos = archive.infolist()
        names = {info.filename for info in infos}
        allowed = {f"{name}.npy" for name in (*_ARRAYS, "meta")}
        if (
            len(names) != len(infos)
            or not names <= allowed
            or not {"meta.npy", "logits.npy", "embeddings.npy"} <= names
        ):
            raise BadEntry("unexpected contents")
        if any(info.file_size > expected.max_bytes() for info in infos):  # a compressed member that would blow up
            raise BadEntry("a member larger than this pool's scores can take")
    handle.seek(0)
    with np.load(handle, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _check(arrays: dict[str, np.ndarray], expected: Expected) -> CachedScores:
    meta_array = arrays["meta"]
    if meta_array.dtype != np.uint8 or meta_array.ndim != 1:
        raise BadEntry("its description is not text")
    meta = json.loads(meta_array.tobytes().decode("utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadEntry("not an eikd-edge score file")
    if meta.get("key") != expected.key:
        raise BadEntry("made for another teacher or pool")
    paths = meta.get("paths")
    files = meta.get("files")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise BadEntry("its image list is not a list of names")
    if files != len(expected.pool_paths):
        raise BadEntry(f"made for {files} files, the pool has {len(expected.pool_paths)}")
    if not _in_scan_order(paths, expected.pool_paths):
        raise BadEntry("names images that are not in the pool, or out of order")
    rows = len(paths)
    if rows == 0:
        raise BadEntry("holds no scores")
    logits = _matrix(arrays, "logits", (rows, expected.num_classes))
    embeddings = _matrix(arrays, "embeddings", (rows, expected.width))
    deviation = _matrix(arrays, "bn_deviation", (rows,)) if "bn_deviation" in arrays else None
    skipped = _skipped(meta.get("skipped"), files - rows)
    return CachedScores(paths, logits, embeddings, deviation, files, skipped)


def _matrix(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> torch.Tensor:
    array = arrays[name]
    if array.dtype != np.float32:
        raise BadEntry(f"{name} is {array.dtype}, not float32")
    if array.shape != shape:
        raise BadEntry(f"{name} has shape {list(array.shape)}, this pool and teacher need {list(shape)}")
    if not np.isfinite(array).all():
        raise BadEntry(f"{name} holds NaN or Inf")
    return torch.from_numpy(np.ascontiguousarray(array))


def _in_scan_order(paths: list[str], pool: list[str]) -> bool:
    """`paths` is a subsequence of the pool's files (the decodable ones, in the order they were scanned)."""
    position = {p: i for i, p in enumerate(pool)}
    last = -1
    for path in paths:
        index = position.get(path)
        if index is None or index <= last:
            return False
        last = index
    return True


def _skipped(value: Any, count: int) -> dict[str, Any]:
    """The skipped-files summary, rebuilt from plain types; its count must be the files that did not decode."""
    if not isinstance(value, dict) or value.get("count") != count:
        raise BadEntry("its skipped-files count does not match")
    reasons = value.get("by_reason", {})
    sample = value.get("sample", [])
    if not isinstance(reasons, dict) or not all(isinstance(k, str) and type(v) is int for k, v in reasons.items()):
        raise BadEntry("its skipped-files reasons are malformed")
    if not isinstance(sample, list) or not all(
        isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("reason"), str) for s in sample
    ):
        raise BadEntry("its skipped-files sample is malformed")
    clean = [{"path": s["path"], "reason": s["reason"]} for s in sample[:20]]
    return {"count": count, "by_reason": dict(reasons), "sample": clean}


def write_entry(path: Path, key: str, scores: CachedScores) -> None:
    """Write the entry atomically: readers (and a second writer of the same entry) see a whole file or none."""
    meta = {"format": FORMAT, "key": key, "paths": scores.paths, "files": scores.files, "skipped": scores.skipped}
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta).encode("ascii"), np.uint8),
        "logits": scores.logits.detach().to(torch.float32).contiguous().numpy(),
        "embeddings": scores.embeddings.detach().to(torch.float32).contiguous().numpy(),
    }
    if scores.bn_deviation is not None:
        arrays["bn_deviation"] = scores.bn_deviation.detach().to(torch.float32).contiguous().numpy()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    write_atomic(path, write)
