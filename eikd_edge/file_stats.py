"""What a set of files looks like from outside: each path with its size and mtime, hashed, so a stale derived file
(scores, decoded images) is never reused after a file was added, removed or edited."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path


def hash_file_stats(digest: hashlib._Hash, paths: Iterable[Path], name: Callable[[Path], str] = str) -> None:
    """Feed `name(path)|size|mtime_ns` per file into `digest`; a file that cannot be read hashes as missing."""
    for path in paths:  # surrogateescape: file names that are not valid UTF-8 (Linux) hash as their raw bytes
        try:
            stat = path.stat()
            line = f"{name(path)}|{stat.st_size}|{stat.st_mtime_ns}\n"
        except OSError:
            line = f"{path}|missing\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
