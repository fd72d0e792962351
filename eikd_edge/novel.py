"""The novel-class report: field samples the teacher cannot place, grouped so a person can look at each kind once.

A sample is a candidate when the teacher is unsure of it (low max softmax) AND its embedding is far from every
class prototype (cosine below what confidently placed samples reach). Both are required: low confidence alone also
flags hard in-class samples between two prototypes, and a low cosine alone also flags odd samples the teacher still
classifies with confidence. Candidates are clustered with spherical k-means (cosine geometry, the teacher's
embedding space), so each cluster is one new "thing" the field contains, with its nearest known class and a few
examples to look at.

Why a hand-written spherical k-means and cosine silhouette instead of scikit-learn's KMeans and silhouette_score:
scikit-learn would become a runtime dependency (about 40 MB with scipy and joblib, on Jetsons often a source
build) for two functions of about 60 lines over at most a few thousand candidates; its KMeans is Euclidean (it
needs unit rows and still updates centres without re-normalising them, i.e. not spherical k-means) and
silhouette_score(metric="cosine") is the same O(n²) computation done here on a seeded subsample. It stays a
test/benchmark dependency only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eikd_edge.prototypes import class_prototypes, cosine_to_prototypes

CONFIDENT = 0.9  # max softmax at which a sample counts as confidently placed (defines "close to a class")
MIN_CONFIDENT = 10  # fewer confidently placed samples than this: learn the cosine threshold from the whole pool
MAX_K = 8
KMEANS_ITERATIONS = 50
SILHOUETTE_SAMPLE = 2000  # silhouette is O(n²): score on a seeded subsample beyond this


@dataclass(frozen=True)
class NovelConfig:
    max_confidence: float = 0.5  # candidates: teacher max softmax below this ...
    cosine_quantile: float = 0.05  # ... and cosine to every prototype below this quantile of the confident ones'
    clusters: int | None = None  # None: choose 2..8 by mean silhouette
    min_cluster: int = 1  # smaller clusters are left out of the report (their samples stay candidates)
    seed: int = 0
    examples: int = 8  # example paths per cluster

    def __post_init__(self) -> None:
        if not 0.0 < self.max_confidence <= 1.0 or not 0.0 <= self.cosine_quantile <= 1.0:
            raise ValueError("max_confidence must be in (0, 1] and cosine_quantile in [0, 1]")
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
    thresholds: tuple[float, float]  # (max confidence, cosine threshold)
    clusters: list[NovelCluster]
    pool_size: int

    def to_json(self) -> dict[str, Any]:
        """Plain Python types only, numbers rounded: the "novel" entry of selection.json."""
        return {
            "count": len(self.candidates),
            "pool_size": self.pool_size,
            "max_confidence": round(float(self.thresholds[0]), 4),
            "cosine_threshold": round(float(self.thresholds[1]), 4),
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
    """Candidates (unsure AND far from every class), clustered in cosine geometry, largest cluster first."""
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
    prototypes = class_prototypes(probs, embeddings)
    cosines = cosine_to_prototypes(embeddings, prototypes).numpy().astype(np.float64)
    threshold = cosine_threshold(confidence, cosines, probs.argmax(dim=1).numpy(), config.cosine_quantile)
    candidates = np.flatnonzero((confidence < config.max_confidence) & (cosines.max(axis=1) < threshold))
    points = unit_rows(embeddings.numpy().astype(np.float64)[candidates])
    labels = _cluster_labels(points, config)
    clusters = _describe_clusters(
        points, labels, candidates, confidence, prototypes.numpy().astype(np.float64), paths, classes, config
    )
    return NovelReport(candidates, (config.max_confidence, threshold), clusters, count)


def cosine_threshold(confidence: np.ndarray, cosines: np.ndarray, predicted: np.ndarray, quantile: float) -> float:
    """The `quantile` of the own-prototype cosine of confidently placed samples: how far a known sample can sit.

    Learned from the data because cosine scales differ between teachers; falls back to the whole pool when too few
    samples are confidently placed to estimate a low quantile.
    """
    own = cosines[np.arange(len(predicted)), predicted]
    confident = confidence >= CONFIDENT
    reference = own[confident] if confident.sum() >= MIN_CONFIDENT else own
    return float(np.quantile(reference, quantile))


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
