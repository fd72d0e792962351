"""How much a top-1 agreement measured on n field images can be trusted: the Wilson score interval.

The gate compares the measured agreement with `--gate` on a stated sample size (every unseen field image, up to
MAX_IMAGES); the interval is reported beside it so a reader sees how far the true agreement may lie. Wilson, not
the normal approximation, because agreements sit near 1, where the normal interval runs past 100%.
"""

from __future__ import annotations

import math

MIN_GATE_IMAGES = 1000  # below this one flip moves agreement by 0.1 point or more: the record says the gate is coarse
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Two-sided Wilson score interval for a binomial proportion (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def coarse_gate_note(n: int) -> str | None:
    """A note for records measured on too few images for a 1% gate to mean much."""
    if n >= MIN_GATE_IMAGES:
        return None
    return (
        f"parity measured on {n} field images (< {MIN_GATE_IMAGES}): one flip moves agreement by "
        f"{100 / max(n, 1):.2f} points; pass a larger --images folder for a sound gate"
    )
