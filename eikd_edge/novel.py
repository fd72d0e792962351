"""The novel-class report: field samples unlike the bulk of the pool, grouped so a person can look at each kind once.

A sample is a candidate when its novelty score, the sum of the positive parts of two robust z-scores over the
pool, exceeds a threshold:

* density: the mean cosine to its nearest pool images. Noise and other degenerate inputs collapse into one
  extremely tight group (cosine near 1 to each other) that the teacher still calls one class with confidence, so
  neither confidence nor the cosine to a class prototype sees them.
* distance from the pool's bulk: the Mahalanobis distance to a Gaussian fitted to the pool's central samples
  (refitted on the closest 75% so the novel images do not pull the fit towards themselves). Distractors that
  are not a tight group are still far out.

Each signal becomes (x - median) / (1.4826 MAD) over the pool, so the threshold is in units of the pool's own
spread: a pool without novel images has few samples past it, rather than a fixed share flagged. Only positive
parts add up: a tight group far from everything has a low density over 200 neighbours, and a tight group inside
the bulk a small distance, and neither must cancel the other signal. Confidence and
prototype cosines are not used to flag: measured on the benchmark tasks (benchmarks/RESULTS.md) they separate
neither noise nor distractors. Candidates are clustered with spherical k-means (cosine geometry, the teacher's
embedding space), so each cluster is one new "thing" the field contains, with its nearest known class and a few
examples to look at (the clustering itself: clustering.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eikd_edge.clustering import choose_k, kmeans, unit_rows
from eikd_edge.prototypes import class_prototypes

DENSITY_REFERENCE = 5000  # density is measured against at most this many pool images (seeded), so cost is O(n)
CORE_SHARE = 0.75  # the Gaussian of the pool's bulk is refitted on this share of samples closest to it
CORE_REFITS = 2
SHRINKAGE = 0.1  # covariance shrunk towards its mean variance: stable with few samples per dimension
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass(frozen=True)
class NovelConfig:
    threshold: float = 2.0  # flag when max(density z, 0) + max(distance z, 0) exceeds this (robust z, pool units)
    neighbours: int = 200  # density: mean cosine to this many nearest pool images
    clusters: int | None = None  # None: choose 2..8 by mean silhouette
    min_cluster: int = 1  # smaller clusters are left out of the report (their samples stay candidates)
    seed: int = 0
    examples: int = 8  # example paths per cluster

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold) or self.neighbours < 1:
            raise ValueError("threshold must be finite and neighbours at least 1")
        if (self.clusters is not None and self.clusters < 1) or self.min_cluster < 1 or self.examples < 0:
            raise ValueError("clusters and min_cluster must be at least 1, examples at least 0")


@dataclass(frozen=True)
class NovelCluster:
    id: int  # 0 = largest
    size: int
    members: np.ndarray  # pool indices, closest to the cluster centre first
    nearest_class: str  # the class whose prototype is closest to the cluster centre
    nearest_cosine: float
    mean_confidence: float  # the teacher's mean max softmax over the members
    examples: list[str]  # paths of the first `examples` members


@dataclass(frozen=True)
class NovelReport:
    candidates: np.ndarray  # pool indices, ascending
    threshold: float  # on the novelty score
    scores: np.ndarray  # [N] novelty score of every pool sample
    clusters: list[NovelCluster]
    pool_size: int

    def to_json(self) -> dict[str, Any]:
        """Plain Python types only, numbers rounded: the "novel" entry of selection.json."""
        return {
            "count": len(self.candidates),
            "pool_size": self.pool_size,
            "rule": "density + distance from the pool's bulk",
            "score_threshold": round(float(self.threshold), 4),
            "clusters": [
                {
                    "id": c.id,
                    "size": c.size,
                    "nearest_class": c.nearest_class,
                    "nearest_cosine": round(c.nearest_cosine, 4),
                    "mean_confidence": round(c.mean_confidence, 4),
                    "examples": list(c.examples),
                }
                for c in self.clusters
            ],
        }


def find_novel(
    logits: torch.Tensor, embeddings: torch.Tensor, paths: list[str], classes: tuple[str, ...], config: NovelConfig
) -> NovelReport:
    """Candidates (novelty score above the threshold), clustered in cosine geometry, largest cluster first."""
    count = len(paths)
    if logits.shape[0] != count or embeddings.shape[0] != count or logits.shape[1] != len(classes):
        raise ValueError(
            f"shapes disagree: logits {tuple(logits.shape)}, embeddings {tuple(embeddings.shape)}, "
            f"{count} paths, {len(classes)} classes"
        )
    if count == 0:
        raise ValueError("no samples to look for novel ones in")
    logits, embeddings = logits.detach().float().cpu(), embeddings.detach().float().cpu()
    probs = logits.softmax(dim=1)
    confidence = probs.max(dim=1).values.numpy().astype(np.float64)
    vectors = embeddings.numpy().astype(np.float64)
    scores = novelty_scores(vectors, config.neighbours, config.seed)
    candidates = np.flatnonzero(scores > config.threshold)
    points = unit_rows(vectors[candidates])
    labels = _cluster_labels(points, config)
    prototypes = class_prototypes(probs, embeddings).numpy().astype(np.float64)
    clusters = _describe_clusters(points, labels, candidates, confidence, prototypes, paths, classes, config)
    return NovelReport(candidates, config.threshold, scores, clusters, count)


def novelty_scores(vectors: np.ndarray, neighbours: int, seed: int) -> np.ndarray:
    """[N] positive part of the robust z of density plus that of the distance from the pool's bulk: high for
    tight groups and for samples far out, in units of the pool's own spread; being ordinary on one signal does not
    excuse being extreme on the other."""
    if len(vectors) < 3:  # no spread to measure against
        return np.zeros(len(vectors))
    density = knn_density(vectors, neighbours, seed)
    distance = core_mahalanobis(vectors)
    return np.maximum(robust_z(density), 0.0) + np.maximum(robust_z(distance), 0.0)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD): a z-score the novel samples themselves barely move. A signal with no spread
    (MAD 0) scores 0 everywhere rather than blowing up."""
    median = float(np.median(values))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    if spread <= 1e-12:
        return np.zeros(len(values))
    return (values - median) / spread


def knn_density(vectors: np.ndarray, neighbours: int, seed: int, reference: int = DENSITY_REFERENCE) -> np.ndarray:
    """[N] mean cosine to the nearest `neighbours` pool images (self excluded).

    Beyond `reference` images the neighbours are looked up in a seeded sample of that size, with the count scaled
    to the sample, so a large pool costs O(N) rather than O(N²).
    """
    points = unit_rows(vectors)
    count = len(points)
    rows = np.arange(count)
    if count > reference:
        rows = np.sort(np.random.default_rng(seed).choice(count, size=reference, replace=False))
    k = max(1, min(round(neighbours * len(rows) / count), len(rows) - 1))
    out = np.empty(count)
    for start in range(0, count, 1024):
        block = points[start : start + 1024] @ points[rows].T
        own = np.arange(start, min(start + 1024, count))
        block[rows[None, :] == own[:, None]] = -np.inf  # a sample is not its own neighbour
        out[start : start + len(block)] = -np.partition(-block, k - 1, axis=1)[:, :k].mean(axis=1)
    return out


def core_mahalanobis(vectors: np.ndarray, share: float = CORE_SHARE, refits: int = CORE_REFITS) -> np.ndarray:
    """[N] Mahalanobis distance to a Gaussian of the pool's bulk: fitted on all samples, then refitted on the
    `share` closest to the previous fit, so a large novel group does not drag the centre and covariance to it."""
    core = np.ones(len(vectors), dtype=bool)
    for _ in range(refits + 1):
        distance = _mahalanobis(vectors, vectors[core])
        core = distance <= np.quantile(distance, share)
    return distance


def _mahalanobis(vectors: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """Distance of every row to the mean of `fit` under its covariance, shrunk so it is always invertible."""
    centre = fit.mean(axis=0)
    centred = fit - centre
    covariance = centred.T @ centred / max(len(fit) - 1, 1)
    scale = max(float(np.trace(covariance)) / len(covariance), 1e-12)
    covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * scale * np.eye(len(covariance))
    offset = vectors - centre
    return np.sqrt(np.maximum(np.einsum("ij,ij->i", offset @ np.linalg.inv(covariance), offset), 0.0))


def _cluster_labels(points: np.ndarray, config: NovelConfig) -> np.ndarray:
    """Cluster ids 0.. with 0 the largest; fewer than 3 points make a single cluster."""
    if len(points) < 3:
        return np.zeros(len(points), dtype=np.int64)
    if config.clusters is None:
        _, labels = choose_k(points, config.seed)
    else:
        labels = kmeans(points, min(config.clusters, len(points)), config.seed)
    return _by_size(labels)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel so that 0 is the largest cluster (ties: the lower old id first); empty ids disappear."""
    names, index, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    rank = np.empty(len(names), dtype=np.int64)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(len(names))
    return rank[index]


def _describe_clusters(
    points: np.ndarray,
    labels: np.ndarray,
    candidates: np.ndarray,
    confidence: np.ndarray,
    prototypes: np.ndarray,
    paths: list[str],
    classes: tuple[str, ...],
    config: NovelConfig,
) -> list[NovelCluster]:
    """One NovelCluster per label, members nearest the centre first; clusters below min_cluster are left out."""
    clusters = []
    for cluster in range(int(labels.max()) + 1 if len(labels) else 0):
        local = np.flatnonzero(labels == cluster)
        if len(local) < config.min_cluster:
            continue
        centre = unit_rows(points[local].sum(axis=0, keepdims=True))[0]
        local = local[np.argsort(-(points[local] @ centre), kind="stable")]
        members = candidates[local]
        to_class = prototypes @ centre
        nearest = int(to_class.argmax())
        clusters.append(
            NovelCluster(
                id=len(clusters),
                size=len(members),
                members=members,
                nearest_class=classes[nearest],
                nearest_cosine=float(to_class[nearest]),
                mean_confidence=float(confidence[members].mean()),
                examples=[paths[i] for i in members[: config.examples]],
            )
        )
    return clusters
