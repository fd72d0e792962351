"""Names of the decoded image sets in a run folder, kept free of heavy imports: the run-folder bookkeeping that
`--help` and usage errors load needs the names, not torch."""

from __future__ import annotations

from pathlib import Path

SETS = ("train", "holdout", "agreement")


def data_file(cache: Path, name: str) -> Path:
    return cache / f"images-{name}.u8"


def record_file(cache: Path, name: str) -> Path:
    return cache / f"images-{name}.json"


def store_names() -> frozenset[str]:
    """File names of every image set, for the run folder's list of the tool's own files."""
    return frozenset(f"images-{name}{suffix}" for name in SETS for suffix in (".u8", ".json"))
