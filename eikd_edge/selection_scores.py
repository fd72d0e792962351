"""What selection ranks the pool's images by, apart from the selecting: each image's in-distribution score as the
teacher sees it (confidence, entropy, energy, prototype cosine), ODSD's closeness and the Gumbel keys it is sampled
by. Pure functions of the teacher's outputs, below every stage."""

from __future__ import annotations

import numpy as np
import torch

from eikd_edge.prototypes import own_prototype_cosine


def in_distribution_scores(logits: torch.Tensor, embeddings: torch.Tensor, kind: str) -> torch.Tensor:
    """Higher = looks more like the teacher's training data. One number per sample."""
    probs = logits.softmax(dim=1)
    if kind == "confidence":
        return probs.max(dim=1).values
    if kind == "entropy":
        return (probs * probs.clamp_min(1e-12).log()).sum(dim=1)  # negative entropy
    if kind == "energy":
        return torch.logsumexp(logits, dim=1)  # -energy
    if kind == "prototype":
        return own_prototype_cosine(probs, embeddings)
    raise ValueError(f"unknown score {kind!r}")


def percentile_ranks(values: torch.Tensor) -> torch.Tensor:
    """Each value's rank scaled to [0, 1] (ties share the mean rank), so scores of any scale can be averaged."""
    n = len(values)
    if n < 2:
        return torch.ones(n)
    v = values.double().numpy()
    ranks = np.empty(n)
    ranks[np.argsort(v, kind="stable")] = np.arange(n)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    mean_rank = np.bincount(inverse, weights=ranks)[inverse] / counts[inverse]
    return torch.from_numpy(mean_rank / (n - 1)).float()


def odsd_closeness(probs: torch.Tensor, embeddings: torch.Tensor, bn_deviation: torch.Tensor | None) -> torch.Tensor:
    """ODSD's closeness to the original distribution as the teacher sees it, in [0, 1]: the mean percentile rank
    of the cosine to the predicted class's prototype and, where the teacher has BatchNorm layers, of the
    (negated) distance to its BatchNorm statistics."""
    ranks = [percentile_ranks(own_prototype_cosine(probs, embeddings))]
    if bn_deviation is not None:
        ranks.append(percentile_ranks(-bn_deviation))
    return torch.stack(ranks).mean(dim=0)


def gumbel_keys(closeness: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Sort keys whose top-k is a draw without replacement with P(i) ∝ exp(closeness_i / temperature)."""
    return closeness / temperature + rng.gumbel(size=closeness.shape)
