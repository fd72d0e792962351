"""Teacher-guided selection of useful samples from the unlabeled pool (EIKD §3.1), and the baselines' subsets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eikd_edge.config import SelectionConfig
from eikd_edge.distill.methods import METHODS
from eikd_edge.scoring import PoolScores
from eikd_edge.selection_scores import gumbel_keys, in_distribution_scores, odsd_closeness


def balanced_quotas(candidates: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal quota per class; a class short of candidates keeps all and its unused quota moves to the others.

    Returns (take per class, deficit per class against the equal share).
    """
    classes = len(candidates)
    share = total / classes
    take = np.zeros(classes, dtype=np.int64)
    open_classes = np.ones(classes, dtype=bool)
    remaining = total
    while remaining > 0 and open_classes.any():
        quota = remaining / open_classes.sum()
        short = open_classes & (candidates - take <= quota)
        if short.any():
            for c in np.flatnonzero(short):
                remaining -= candidates[c] - take[c]
                take[c] = candidates[c]
                open_classes[c] = False
            continue
        per_class = int(np.floor(quota))
        open_idx = np.flatnonzero(open_classes)
        take[open_idx] += per_class
        leftover = remaining - per_class * len(open_idx)
        for c in open_idx[:leftover]:  # spread the remainder deterministically
            take[c] += 1
        remaining = 0
    deficit = np.maximum(0, np.floor(share).astype(np.int64) - candidates)
    return take, deficit


def drop_near_duplicates(embeddings: torch.Tensor, order: np.ndarray, threshold: float) -> np.ndarray:
    """Walk `order` (best first) and keep a sample only if no kept sample has cosine above `threshold`."""
    if len(order) == 0:
        return order
    normed = F.normalize(embeddings[torch.as_tensor(order)], dim=1)
    kept: list[int] = []
    for position in range(len(order)):
        if kept and float((normed[kept] @ normed[position]).max()) > threshold:
            continue
        kept.append(position)
    return order[kept]


@dataclass(frozen=True)
class Selection:
    """Which pool samples train the student, which are held out for label-free model selection."""

    pool: PoolScores
    classes: tuple[str, ...]
    method: str
    config: SelectionConfig
    predicted: np.ndarray  # [N] class index
    confidence: np.ndarray  # [N]
    score: np.ndarray  # [N]
    selected: np.ndarray  # [N] bool
    split: np.ndarray  # [N] "train" | "holdout" | "agreement" | ""
    per_class: list[dict[str, Any]]
    closeness_from: list[str] = field(default_factory=list)  # ODSD only: the signals behind `score`

    @property
    def train_indices(self) -> np.ndarray:
        return np.flatnonzero(self.split == "train")

    @property
    def holdout_indices(self) -> np.ndarray:
        return np.flatnonzero(self.split == "holdout")

    @property
    def agreement_indices(self) -> np.ndarray:
        """The fixed slice of the whole pool no method trains on (eikd_edge.agreement)."""
        return np.flatnonzero(self.split == "agreement")

    def to_json(self) -> dict[str, Any]:
        deficits = [c["name"] for c in self.per_class if c["deficit"] > 0]
        return {
            "method": self.method,
            "sampler": "odsd" if self.closeness_from else "top",
            "closeness_from": self.closeness_from,
            "settings": self.config.model_dump(mode="json"),
            "pool": {
                "root": str(self.pool.root),
                "files": self.pool.files,
                "decoded": len(self.pool.paths),
                "skipped": self.pool.skipped,
                "scoring_s": round(self.pool.seconds, 3),
            },
            "selected_count": int(self.selected.sum()),
            "train_count": int((self.split == "train").sum()),
            "holdout_count": int((self.split == "holdout").sum()),
            "agreement_count": int((self.split == "agreement").sum()),
            "classes": self.per_class,
            "classes_below_quota": deficits,
            "manifest": [
                {
                    "path": path,
                    "predicted": self.classes[int(self.predicted[i])],
                    "confidence": round(float(self.confidence[i]), 6),
                    "score": round(float(self.score[i]), 6),
                    "selected": bool(self.selected[i]),
                    "split": self.split[i] or None,
                }
                for i, path in enumerate(self.pool.paths)
            ],
        }


def select(
    pool: PoolScores,
    classes: tuple[str, ...],
    config: SelectionConfig,
    method: str = "eikd",
    seed: int = 0,
    agreement: np.ndarray | None = None,
) -> Selection:
    """EIKD: class-balanced top-scored; kd: whole pool; random: random subset of EIKD's size; dfnd: global top-k
    (each method's strategy is its entry's `selection` in eikd_edge.distill.methods).

    `agreement`: pool indices of the fixed agreement slice; no method may select them.
    """
    probs = pool.logits.softmax(dim=1)
    predicted = probs.argmax(dim=1).numpy()
    confidence = probs.max(dim=1).values.numpy()
    count = len(pool.paths)
    reserved = np.zeros(count, dtype=bool)
    if agreement is not None:
        reserved[agreement] = True
    open_idx = np.flatnonzero(~reserved)
    budget = max(1, round(config.keep_fraction * len(open_idx)))
    rng = np.random.default_rng(seed)
    strategy = METHODS[method]
    odsd = strategy.samples_by_odsd(config.sampler)
    score, order_key = _scores(pool, probs, strategy.score_kind_fixed or config.score, config, seed, odsd)
    ranked = _ranked_per_class(pool, predicted, order_key, len(classes), config, reserved)
    candidates = np.array([len(members) for members in ranked], dtype=np.int64)
    if config.balance:
        take, deficit = balanced_quotas(candidates, min(budget, int(candidates.sum())))
    else:
        take, deficit = candidates, np.zeros_like(candidates)
    eikd_choice = (
        np.sort(np.concatenate([members[:quota] for members, quota in zip(ranked, take, strict=True)]))
        if config.balance
        else open_idx[np.argsort(-order_key[open_idx], kind="stable")][:budget]
    )
    selected = np.zeros(count, dtype=bool)
    selected[_chosen(strategy.selection, open_idx, eikd_choice, score, rng)] = True
    split = _holdout_split(selected, predicted, config.holdout_fraction, rng)
    split[reserved] = "agreement"
    quotas = strategy.selection == "class_balanced"  # only a class-balanced choice has quotas to fall short of
    per_class = _per_class(
        classes, candidates, take if quotas else None, deficit if quotas else None, selected, predicted
    )
    signals = odsd_signals(pool, odsd)
    return Selection(pool, classes, method, config, predicted, confidence, score, selected, split, per_class, signals)


def _scores(
    pool: PoolScores, probs: torch.Tensor, score_kind: str, config: SelectionConfig, seed: int, odsd: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's score, and the key it is ranked by: ODSD's closeness sampled by Gumbel keys, else the
    in-distribution score itself."""
    if odsd:  # sampled, not thresholded: near-distribution images are likely, and the subset stays diverse
        score = odsd_closeness(probs, pool.embeddings, pool.bn_deviation).numpy()
        return score, gumbel_keys(score, config.odsd_temperature, np.random.default_rng([seed, 1]))
    score = in_distribution_scores(pool.logits, pool.embeddings, score_kind).numpy()
    return score, score


def _chosen(
    selection: str, open_idx: np.ndarray, eikd_choice: np.ndarray, score: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The method's subset of the open images; baselines get a subset of EIKD's size, for an honest comparison."""
    size = len(eikd_choice)
    if selection == "whole_pool":
        return open_idx
    if selection == "random_same_size":
        return np.sort(rng.choice(open_idx, size=size, replace=False))
    if selection == "global_top_confidence":
        return open_idx[np.argsort(-score[open_idx], kind="stable")][:size]
    return eikd_choice


def _per_class(
    classes: tuple[str, ...],
    candidates: np.ndarray,
    take: np.ndarray | None,
    deficit: np.ndarray | None,
    selected: np.ndarray,
    predicted: np.ndarray,
) -> list[dict[str, Any]]:
    """selection.json's per-class counts; `take`/`deficit` None where the choice has no quotas."""
    return [
        {
            "name": name,
            "candidates": int(candidates[c]),
            "quota": int(take[c]) if take is not None else None,
            "selected": int((selected & (predicted == c)).sum()),
            "deficit": int(deficit[c]) if deficit is not None else 0,
        }
        for c, name in enumerate(classes)
    ]


def odsd_signals(pool: PoolScores, odsd: bool) -> list[str]:
    """What ODSD's closeness was computed from, for selection.json and the summary."""
    if not odsd:
        return []
    return ["prototype cosine"] + (["BatchNorm statistics"] if pool.bn_deviation is not None else [])


def _ranked_per_class(
    pool: PoolScores,
    predicted: np.ndarray,
    order_key: np.ndarray,
    num_classes: int,
    config: SelectionConfig,
    reserved: np.ndarray,
) -> list[np.ndarray]:
    """Each class's candidates, best first, with near-duplicates already removed (so quotas count real options).
    Images of the agreement slice (`reserved`) are never candidates."""
    ranked = []
    for c in range(num_classes):
        members = np.flatnonzero((predicted == c) & ~reserved)
        ordered = members[np.argsort(-order_key[members], kind="stable")]
        if config.dedup_threshold is not None:
            ordered = drop_near_duplicates(pool.embeddings, ordered, config.dedup_threshold)
        ranked.append(ordered)
    return ranked


def _holdout_split(
    selected: np.ndarray, predicted: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Stratified by predicted class; at least one training sample always remains."""
    split = np.where(selected, "train", "").astype(object)
    if fraction <= 0:
        return split
    for c in np.unique(predicted[selected]):
        members = np.flatnonzero(selected & (predicted == c))
        n_hold = round(fraction * len(members))
        if n_hold and len(members) > 1:
            split[rng.choice(members, size=min(n_hold, len(members) - 1), replace=False)] = "holdout"
    if not (split == "train").any():
        split[np.flatnonzero(selected)[0]] = "train"
    return split
