"""The fixed agreement slice: a share of the field pool that no method trains on, on which the student's
agreement with the teacher is measured.

Measured on each method's own held-out share of *its* selection, agreement flatters selective methods (they hold
out the images the teacher is surest of). The slice is drawn from the whole pool before selection, by a hash of
each image's path: the same images for every method and every seed, and mostly the same when files are added.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

FLOOR = 200  # a slice this size pins agreement to about ±6 points (95%); small pools give up to a quarter for it
FLOOR_SHARE = 0.25


def slice_size(count: int, fraction: float, maximum: int) -> int:
    """`fraction` of the pool, raised towards FLOOR images (at most a quarter of the pool), capped at `maximum`."""
    if fraction <= 0 or maximum <= 0 or count < 2:
        return 0
    wanted = max(round(fraction * count), min(FLOOR, int(FLOOR_SHARE * count)))
    return min(wanted, maximum, count - 1)


def path_keys(paths: list[str]) -> np.ndarray:
    """A stable pseudo-random key per path (first 8 bytes of its SHA-256), independent of any seed."""
    return np.array(
        [int.from_bytes(hashlib.sha256(p.encode("utf-8", "surrogateescape")).digest()[:8], "big") for p in paths],
        dtype=np.uint64,
    )


def agreement_slice(paths: list[str], fraction: float, maximum: int) -> np.ndarray:
    """Indices (ascending) of the slice: the `slice_size` paths with the smallest keys."""
    size = slice_size(len(paths), fraction, maximum)
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.array(paths, dtype=object).astype(str), path_keys(paths)))
    return np.sort(order[:size]).astype(np.int64)


def ci95(share: float | None, count: int) -> float | None:
    """Half-width of the 95% Wilson interval of a share measured on `count` images (None when not measured)."""
    if share is None or count <= 0 or share != share:
        return None
    z = 1.96
    centre_spread = z * math.sqrt(share * (1 - share) / count + z * z / (4 * count * count))
    return centre_spread / (1 + z * z / count)


def constant_guess_rate(teacher_classes: np.ndarray) -> float | None:
    """The agreement a student gets by always answering the teacher's most common class on the slice: the floor
    below which (or near which) a student has learned nothing."""
    if len(teacher_classes) == 0:
        return None
    return float(np.bincount(teacher_classes).max() / len(teacher_classes))


NEAR_CHANCE_FACTOR = 2.0  # agreement under twice the constant guess: the student has barely learned


def near_chance(top1: float | None, constant_guess: float | None) -> bool:
    """Under twice the constant guess, or under halfway from it to 100% when one class dominates the slice (a
    teacher that answers one class for 60% of the pool leaves no room for "twice")."""
    if top1 is None or constant_guess is None:
        return False
    return top1 < min(NEAR_CHANCE_FACTOR * constant_guess, (1 + constant_guess) / 2)
