"""Decoded images on disk: one raw uint8 file per image set of a run, read a batch at a time.

At 224 px a decoded image is 150 KB: half of a 100k-image pool is 7.5 GB, more than a workstation should hold
twice while concatenating. Each set (train, holdout, agreement) is decoded once, batch by batch, into
`RUN/cache/images-<set>.u8` (raw N×3×H×W bytes) and read back as `DiskImages`: a batch costs only its own
rows, so host memory stays flat however large the pool. `images-<set>.json` says what the file holds (a key
over the images' paths, sizes, mtimes and the decode policy; the positions that decoded); it is
written after the data file, so a file without a matching record is never read. Both are written through
`write_atomic`: a killed decode leaves only a temp file, swept by the next command, never a half file under
the real name. `--resume` finds a matching file and skips decoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eikd_edge.atomic import write_atomic, write_json_atomic
from eikd_edge.data import DecodeReport, iter_decoded
from eikd_edge.disk_images import DiskImages
from eikd_edge.file_stats import hash_file_stats
from eikd_edge.image_files import SETS, data_file, record_file
from eikd_edge.models.spec import InputSpec

STORE_FORMAT = 1
MAX_RECORD_BYTES = 64 << 20  # positions of a few million images; anything larger is not ours
DECODE_BATCH = 256


def images_key(paths: Sequence[Path], spec: InputSpec) -> str:
    """Changes when any image file (path, size, mtime) or the decode policy changes: a stale file is never reused."""
    digest = hashlib.sha256()
    digest.update(json.dumps(spec.to_dict(), sort_keys=True).encode() + b"\n")
    hash_file_stats(digest, paths)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredImages:
    images: DiskImages  # uint8 [N, 3, H, W], read from the file a batch at a time
    kept: np.ndarray  # positions in the requested path list of the images that decoded, int64 [N]
    reused: bool


def load_or_decode(
    cache: Path, name: str, paths: Sequence[Path], spec: InputSpec, workers: int | None = None
) -> StoredImages:
    """The set's images from its file when the file matches these paths and policy, else decoded into it."""
    key = images_key(paths, spec)
    stored = open_stored(cache, name, key, spec, len(paths))
    if stored is not None:
        return stored
    decode_into(cache, name, paths, spec, key, workers)
    stored = open_stored(cache, name, key, spec, len(paths))
    if stored is None:  # written a moment ago under the run lock: only a failing disk gets here
        raise OSError(f"decoded images at {data_file(cache, name)} could not be read back")
    return StoredImages(stored.images, stored.kept, reused=False)


def decode_into(
    cache: Path, name: str, paths: Sequence[Path], spec: InputSpec, key: str, workers: int | None = None
) -> None:
    """Decode batch by batch straight into the data file (only the images that decoded, in order)."""
    shape = (3, *spec.input_size)
    kept: list[int] = []

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # plain appends: the page cache holds them, not this process
            for batch in iter_decoded(paths, spec, DECODE_BATCH, DecodeReport(), workers=workers):
                handle.write(batch.images.numpy().tobytes())
                kept.extend(batch.indices)

    cache.mkdir(parents=True, exist_ok=True)
    record_file(cache, name).unlink(missing_ok=True)  # the old record must never describe the new data
    write_atomic(data_file(cache, name), write)
    record = {"format": STORE_FORMAT, "key": key, "shape": list(shape), "count": len(kept), "kept": kept}
    write_json_atomic(record_file(cache, name), record)


def open_stored(cache: Path, name: str, key: str, spec: InputSpec, requested: int) -> StoredImages | None:
    """The set's file, read on demand, when its record matches `key` and the file holds exactly what it says."""
    record = _read_record(record_file(cache, name))
    shape = (3, *spec.input_size)
    if record is None or record.get("key") != key or record.get("shape") != list(shape):
        return None
    count, kept = record.get("count"), record.get("kept")
    if not _valid_positions(kept, count, requested):
        return None
    try:  # DiskImages refuses a link, a non-regular file and a file of any other size than count rows
        images = DiskImages(data_file(cache, name), count, shape)
    except OSError:
        return None
    return StoredImages(images, np.asarray(kept, dtype=np.int64), reused=True)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == STORE_FORMAT else None


def _valid_positions(kept: Any, count: Any, requested: int) -> bool:
    """Increasing positions into the requested list, one per stored image: anything else is not a file we wrote."""
    if not isinstance(count, int) or isinstance(count, bool) or not isinstance(kept, list) or len(kept) != count:
        return False
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in kept):
        return False
    positions = np.asarray(kept, dtype=np.int64)
    return not kept or (positions[0] >= 0 and positions[-1] < requested and bool(np.all(np.diff(positions) > 0)))


def remove_sets(cache: Path) -> None:
    """Drop every set's files: a finished run has nothing left to resume, and they are as large as the pool."""
    for name in SETS:
        for path in (record_file(cache, name), data_file(cache, name)):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
