"""Spherical k-means and the cosine silhouette that picks k, apart from the novel-class report that clusters its
candidates with them (novel.py): cosine geometry, the teacher's embedding space.

Why a hand-written spherical k-means and cosine silhouette instead of scikit-learn's KMeans and silhouette_score:
scikit-learn would become a runtime dependency (about 40 MB with scipy and joblib, on Jetsons often a source
build) for two functions of about 60 lines over at most a few thousand candidates; its KMeans is Euclidean (it
needs unit rows and still updates centres without re-normalising them, i.e. not spherical k-means) and
silhouette_score(metric="cosine") is the same O(n²) computation done here on a seeded subsample. It stays a
test/benchmark dependency only.
"""

from __future__ import annotations

import numpy as np

MAX_K = 8
KMEANS_ITERATIONS = 50
SILHOUETTE_SAMPLE = 2000  # silhouette is O(n²): score on a seeded subsample beyond this


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), so dot products are cosines."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def kmeans(points: np.ndarray, k: int, seed: int, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Spherical k-means with k-means++ seeding on unit rows: [n] labels in 0..k-1, the same for the same seed.

    Distance is 1 - cosine, centres are renormalised member means. A cluster that empties is restarted on the
    point farthest from its centre, so k clusters come back whenever there are k distinct points.
    """
    rng = np.random.default_rng(seed)
    centres = _kmeans_pp(points, k, rng)
    labels = np.full(len(points), -1)
    for _ in range(iterations):
        similarity = points @ centres.T
        new = similarity.argmax(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        fit = similarity[np.arange(len(points)), labels]
        for c in range(k):
            members = labels == c
            if members.any():
                centres[c] = unit_rows(points[members].sum(axis=0, keepdims=True))[0]
            else:
                far = int(np.argmin(fit))
                centres[c], labels[far], fit[far] = points[far], c, np.inf
    return labels


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++: each next centre drawn with probability proportional to its squared distance to the nearest one."""
    chosen = [int(rng.integers(len(points)))]
    nearest = _cosine_distance(points, points[chosen[0]])
    for _ in range(1, k):
        weight = nearest**2
        total = weight.sum()
        if total <= 0:  # every point sits on a centre already: any unused one will do
            unused = np.setdiff1d(np.arange(len(points)), chosen)
            pick = int(rng.choice(unused))
        else:
            pick = int(rng.choice(len(points), p=weight / total))
        chosen.append(pick)
        nearest = np.minimum(nearest, _cosine_distance(points, points[pick]))
    return points[chosen].copy()


def _cosine_distance(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - points @ centre, 0.0, 2.0)


def cosine_silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette with cosine distance (sklearn's definition: a singleton's silhouette is 0).

    Needs 2 <= number of labels <= n - 1, as the score is undefined otherwise.
    """
    names, index = np.unique(labels, return_inverse=True)
    if not 2 <= len(names) <= len(labels) - 1:
        raise ValueError(f"silhouette needs 2 to n-1 clusters, got {len(names)} for {len(labels)} points")
    unit = unit_rows(points)
    distance = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    onehot = np.eye(len(names))[index]  # [n, k]
    sizes = onehot.sum(axis=0)
    mean_to = (distance @ onehot) / sizes  # [n, k] mean distance to each cluster (own cluster includes self = 0)
    own = sizes[index]
    a = mean_to[np.arange(len(labels)), index] * own / np.maximum(own - 1, 1)
    mean_to[np.arange(len(labels)), index] = np.inf
    b = mean_to.min(axis=1)
    score = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(score.mean())


def choose_k(points: np.ndarray, seed: int, max_k: int = MAX_K) -> tuple[int, np.ndarray]:
    """The k in 2..min(max_k, n-1) with the highest mean silhouette (the smaller k on ties), and its labels.

    The score is taken on one seeded subsample of at most SILHOUETTE_SAMPLE points, the same for every k.
    """
    rng = np.random.default_rng(seed)
    sample = np.arange(len(points))
    if len(points) > SILHOUETTE_SAMPLE:
        sample = np.sort(rng.choice(len(points), size=SILHOUETTE_SAMPLE, replace=False))
    best: tuple[float, int, np.ndarray] | None = None
    for k in range(2, min(max_k, len(points) - 1) + 1):
        labels = kmeans(points, k, seed)
        sampled = labels[sample]
        used = len(np.unique(sampled))
        score = cosine_silhouette(points[sample], sampled) if 2 <= used <= len(sample) - 1 else -1.0
        if best is None or score > best[0]:
            best = (score, k, labels)
    assert best is not None
    return best[1], best[2]
