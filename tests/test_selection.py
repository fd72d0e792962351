"""Teacher-guided, class-balanced selection of the unlabeled pool (DESIGN §3.1) and the baselines' subsets (§3.6)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eikd_edge.config import SelectionConfig
from eikd_edge.scoring import PoolScores
from eikd_edge.selection import balanced_quotas, drop_near_duplicates, select
from eikd_edge.selection_scores import in_distribution_scores

CLASSES = ("a", "b", "c")


def make_pool(root: Path, logits: torch.Tensor, embeddings: torch.Tensor | None = None) -> PoolScores:
    n = logits.shape[0]
    if embeddings is None:
        embeddings = torch.eye(n, max(n, 2))[:, : max(n, 2)]  # all distinct directions
    return PoolScores(
        root=root,
        paths=[f"img{i:03d}.png" for i in range(n)],
        logits=logits.float(),
        embeddings=embeddings.float(),
        files=n,
        skipped={"count": 0, "by_reason": {}, "sample": []},
        seconds=0.0,
        from_cache=False,
    )


def class_logits(spec: list[tuple[int, float]], classes: int = 3) -> torch.Tensor:
    """One row per (predicted class, strength): that logit is the strength, the rest 0 (higher = more confident)."""
    rows = torch.zeros(len(spec), classes)
    for i, (c, strength) in enumerate(spec):
        rows[i, c] = strength
    return rows


# Class a: 6 candidates, b: 1, c: 5 — 12 samples; strengths are all distinct so every ranking is unambiguous.
POOL_SPEC = [
    (0, 5.0),  # 0
    (2, 1.5),  # 1
    (0, 1.0),  # 2
    (1, 0.7),  # 3  the only "b"
    (0, 4.0),  # 4
    (2, 3.5),  # 5
    (0, 2.0),  # 6
    (2, 0.5),  # 7
    (0, 3.0),  # 8
    (2, 2.5),  # 9
    (0, 6.0),  # 10
    (2, 0.2),  # 11
]


@pytest.fixture()
def pool(tmp_path: Path) -> PoolScores:
    return make_pool(tmp_path, class_logits(POOL_SPEC))


# ----------------------------------------------------------------------------- balanced_quotas


def test_balanced_quotas_moves_unused_quota_to_other_classes() -> None:
    take, deficit = balanced_quotas(np.array([10, 1, 10]), 9)
    assert take.tolist() == [4, 1, 4]
    assert deficit.tolist() == [0, 2, 0]


def test_balanced_quotas_total_at_least_sum_keeps_everything() -> None:
    for total in (7, 20):
        take, deficit = balanced_quotas(np.array([2, 0, 5]), total)
        assert take.tolist() == [2, 0, 5]
    take, deficit = balanced_quotas(np.array([2, 0, 5]), 7)
    assert deficit.tolist() == [0, 2, 0]  # equal share floor(7/3) = 2


def test_balanced_quotas_remainder_sums_exactly_to_total() -> None:
    take, deficit = balanced_quotas(np.array([10, 10, 10]), 7)
    assert sorted(take.tolist()) == [2, 2, 3]
    assert int(take.sum()) == 7
    assert deficit.tolist() == [0, 0, 0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        candidates = rng.integers(0, 30, size=int(rng.integers(1, 8)))
        total = int(rng.integers(1, 120))
        take, deficit = balanced_quotas(candidates, total)
        assert int(take.sum()) == min(total, int(candidates.sum()))
        assert (take >= 0).all()
        assert (take <= candidates).all()
        # balanced: a class below another's take must have used up all of its candidates
        for c in range(len(candidates)):
            if take[c] < candidates[c]:
                assert take[c] >= take.max() - 1


def test_balanced_quotas_cascade_of_short_classes() -> None:
    take, _ = balanced_quotas(np.array([1, 3, 100, 100]), 20)
    # share 5: class 0 keeps 1, class 1 keeps 3, the remaining 16 split 8/8
    assert take.tolist() == [1, 3, 8, 8]


# ----------------------------------------------------------------------------- select


def test_select_eikd_takes_top_scored_per_class(pool: PoolScores) -> None:
    config = SelectionConfig(sampler="top", keep_fraction=0.5, holdout_fraction=0.0)
    selection = select(pool, CLASSES, config, method="eikd")
    # budget 6; candidates [6, 1, 5] → quotas: b keeps its 1, a and c share 5 → [3, 1, 2]
    assert int(selection.selected.sum()) == 6
    assert [c["quota"] for c in selection.per_class] == [3, 1, 2]
    assert [c["candidates"] for c in selection.per_class] == [6, 1, 5]
    assert [c["selected"] for c in selection.per_class] == [3, 1, 2]
    assert [c["deficit"] for c in selection.per_class] == [0, 1, 0]  # equal share 2, "b" has 1
    # a: strengths 6 (10), 5 (0), 4 (4); b: 3; c: 3.5 (5), 2.5 (9)
    assert sorted(np.flatnonzero(selection.selected).tolist()) == [0, 3, 4, 5, 9, 10]
    assert selection.predicted.tolist() == [c for c, _ in POOL_SPEC]
    assert selection.to_json()["classes_below_quota"] == ["b"]
    assert selection.train_indices.tolist() == [0, 3, 4, 5, 9, 10]
    assert selection.holdout_indices.tolist() == []


def test_select_eikd_uses_the_configured_score(tmp_path: Path) -> None:
    # two "a" samples with the same confidence ranking but opposite energy ranking
    logits = torch.tensor([[2.0, 0.0], [1.0, -1.0], [0.0, 3.0], [0.0, 1.0]])
    # rows 0 and 1 have the same softmax; row 1 has lower logsumexp
    pool = make_pool(tmp_path, logits)
    config = SelectionConfig(sampler="top", keep_fraction=0.5, holdout_fraction=0.0, score="energy")
    selection = select(pool, ("a", "b"), config)
    assert np.flatnonzero(selection.selected).tolist() == [0, 2]
    assert selection.score.tolist() == pytest.approx(torch.logsumexp(logits, dim=1).tolist(), abs=1e-6)


def test_select_keep_fraction_sets_the_total(pool: PoolScores) -> None:
    for fraction, expected in [(0.25, 3), (0.75, 9), (1.0, 12), (0.01, 1)]:
        selection = select(pool, CLASSES, SelectionConfig(sampler="top", keep_fraction=fraction, holdout_fraction=0.0))
        assert int(selection.selected.sum()) == expected, fraction


def test_select_kd_selects_everything(pool: PoolScores) -> None:
    selection = select(
        pool, CLASSES, SelectionConfig(sampler="top", keep_fraction=0.5, holdout_fraction=0.0), method="kd"
    )
    assert selection.selected.all()
    assert [c["quota"] for c in selection.per_class] == [None, None, None]
    assert selection.to_json()["classes_below_quota"] == []


def test_select_random_same_size_as_eikd_and_deterministic(pool: PoolScores) -> None:
    config = SelectionConfig(sampler="top", keep_fraction=0.5, holdout_fraction=0.0)
    eikd = select(pool, CLASSES, config, method="eikd")
    picks = []
    for seed in range(6):
        first = select(pool, CLASSES, config, method="random", seed=seed)
        again = select(pool, CLASSES, config, method="random", seed=seed)
        assert int(first.selected.sum()) == int(eikd.selected.sum())
        assert np.array_equal(first.selected, again.selected)
        assert np.array_equal(first.split, again.split)
        picks.append(tuple(np.flatnonzero(first.selected)))
    assert len(set(picks)) > 1  # the seed matters


def test_select_random_same_size_as_eikd_with_dedup(tmp_path: Path) -> None:
    # 8 samples of class "a" that are all the same image (identical embeddings), 8 distinct samples of "b"
    logits = class_logits([(0, 1.0 + i * 0.1) for i in range(8)] + [(1, 1.0 + i * 0.1) for i in range(8)], classes=2)
    embeddings = torch.cat([torch.tensor([[1.0] + [0.0] * 9]).repeat(8, 1), torch.eye(10)[2:]])
    pool = make_pool(tmp_path, logits, embeddings)
    config = SelectionConfig(sampler="top", keep_fraction=0.5, holdout_fraction=0.0, dedup_threshold=0.99)
    eikd = select(pool, ("a", "b"), config, method="eikd")
    random = select(pool, ("a", "b"), config, method="random")
    assert int(random.selected.sum()) == int(eikd.selected.sum())
    assert int(eikd.selected.sum()) == 8  # the requested total (keep_fraction · 16), refilled from class "b"
    assert eikd.per_class[0]["selected"] == 1 and eikd.per_class[0]["deficit"] == 3


def test_select_eikd_dedup_drops_duplicates(tmp_path: Path) -> None:
    logits = class_logits([(0, 3.0), (0, 2.0), (0, 1.0), (1, 3.0), (1, 2.0), (1, 1.0)], classes=2)
    # sample 1 duplicates sample 0 (scaled), everything else is distinct
    embeddings = torch.tensor(
        [
            [1.0, 0, 0, 0, 0],
            [2.0, 0, 0, 0, 0],
            [0, 1.0, 0, 0, 0],
            [0, 0, 1.0, 0, 0],
            [0, 0, 0, 1.0, 0],
            [0, 0, 0, 0, 1.0],
        ]
    )
    pool = make_pool(tmp_path, logits, embeddings)
    config = SelectionConfig(sampler="top", keep_fraction=4 / 6, holdout_fraction=0.0, dedup_threshold=0.95)
    selection = select(pool, ("a", "b"), config)
    assert np.flatnonzero(selection.selected).tolist() == [0, 2, 3, 4]


def test_select_dfnd_takes_global_top_confidence_unbalanced(tmp_path: Path) -> None:
    # all of class "a" is more confident than anything else; dfnd ignores balance and the configured score
    spec = [(0, 9.0), (1, 1.0), (0, 8.0), (2, 2.0), (0, 7.0), (1, 1.5), (2, 0.5), (1, 0.1)]
    pool = make_pool(tmp_path, class_logits(spec))
    config = SelectionConfig(sampler="top", keep_fraction=3 / 8, holdout_fraction=0.0, score="energy")
    dfnd = select(pool, CLASSES, config, method="dfnd")
    assert np.flatnonzero(dfnd.selected).tolist() == [0, 2, 4]
    assert dfnd.score.tolist() == pytest.approx(dfnd.confidence.tolist())
    eikd = select(pool, CLASSES, config, method="eikd")
    assert np.flatnonzero(eikd.selected).tolist() == [0, 3, 5]  # one per class


def test_select_unbalanced_eikd_is_global_top(pool: PoolScores) -> None:
    config = SelectionConfig(sampler="top", keep_fraction=0.5, holdout_fraction=0.0, balance=False)
    selection = select(pool, CLASSES, config)
    strengths = np.array([s for _, s in POOL_SPEC])
    assert sorted(np.flatnonzero(selection.selected).tolist()) == sorted(np.argsort(-strengths)[:6].tolist())


# ----------------------------------------------------------------------------- scores


def test_in_distribution_scores_hand_values() -> None:
    logits = torch.tensor([[math.log(2.0), 0.0, -1e9], [0.0, 0.0, 0.0], [5.0, 0.0, 0.0]])  # row 0: p = (2/3, 1/3, 0)
    embeddings = torch.eye(3)
    confidence = in_distribution_scores(logits, embeddings, "confidence")
    assert confidence.tolist() == pytest.approx([2 / 3, 1 / 3, math.exp(5) / (math.exp(5) + 2)], abs=1e-6)
    entropy = in_distribution_scores(logits, embeddings, "entropy")  # negative entropy: higher = more peaked
    assert entropy[0].item() == pytest.approx(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3), abs=1e-5)
    assert entropy[1].item() == pytest.approx(-math.log(3.0), abs=1e-5)
    assert entropy[2] > entropy[0] > entropy[1]
    energy = in_distribution_scores(logits[1:], embeddings[1:], "energy")  # −energy = logsumexp
    assert energy.tolist() == pytest.approx([math.log(3.0), math.log(math.exp(5) + 2)], abs=1e-5)
    assert float(in_distribution_scores(torch.tensor([[10.0, 10.0]]), torch.eye(2)[:1], "energy")) == pytest.approx(
        10 + math.log(2.0), abs=1e-5
    )


def test_prototype_score_hand_values() -> None:
    # two "a" samples with orthogonal embeddings and equal confidence: prototype is their bisector → cos 1/√2 each;
    # three "b" samples, two identical and one off-axis: the off-axis one scores lowest
    logits = class_logits([(0, 2.0), (0, 2.0), (1, 2.0), (1, 2.0), (1, 2.0)], classes=2)
    embeddings = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 3.0], [0.0, 1.0, 1.0]])
    score = in_distribution_scores(logits, embeddings, "prototype")
    assert score[:2].tolist() == pytest.approx([1 / math.sqrt(2)] * 2, abs=1e-6)
    assert score[2] == pytest.approx(score[3])
    assert score[4] < score[2]
    assert score[2] > 0.9


def test_unknown_score_kind_raises() -> None:
    with pytest.raises(ValueError, match="unknown score"):
        in_distribution_scores(torch.zeros(1, 2), torch.zeros(1, 2), "bogus")


# ----------------------------------------------------------------------------- near-duplicates


def test_drop_near_duplicates() -> None:
    embeddings = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.7, 0.7, 0.0]])
    kept = drop_near_duplicates(embeddings, np.array([0, 1, 2, 3, 4]), threshold=0.95)
    assert kept.tolist() == [0, 1, 3, 4]  # 2 is a scaled copy of 0; 4 has cosine 0.707 to 0 and 1
    # the walk goes in the given (best-first) order: the better duplicate survives
    assert drop_near_duplicates(embeddings, np.array([2, 0, 1]), threshold=0.95).tolist() == [2, 1]
    assert drop_near_duplicates(embeddings, np.array([0, 1, 3]), threshold=0.95).tolist() == [0, 1, 3]
    assert drop_near_duplicates(embeddings, np.array([0, 4]), threshold=0.5).tolist() == [0]
    assert drop_near_duplicates(embeddings, np.array([], dtype=np.int64), threshold=0.9).tolist() == []


# ----------------------------------------------------------------------------- hold-out split


def test_holdout_split_is_stratified_and_disjoint(tmp_path: Path) -> None:
    spec = [(i % 2, 1.0 + i * 0.01) for i in range(40)]  # 20 of each class
    pool = make_pool(tmp_path, class_logits(spec, classes=2), torch.randn(40, 4))
    selection = select(
        pool, ("a", "b"), SelectionConfig(sampler="top", keep_fraction=1.0, holdout_fraction=0.25), seed=3
    )
    train, holdout = set(selection.train_indices.tolist()), set(selection.holdout_indices.tolist())
    assert not train & holdout
    assert train | holdout == set(np.flatnonzero(selection.selected).tolist())
    assert len(holdout) == 10
    for c in (0, 1):
        assert sum(1 for i in holdout if selection.predicted[i] == c) == 5
    assert set(selection.split[~selection.selected].tolist()) <= {""}


def test_holdout_split_roughly_fraction_of_selected(pool: PoolScores) -> None:
    selection = select(pool, CLASSES, SelectionConfig(sampler="top", keep_fraction=1.0, holdout_fraction=0.3), seed=0)
    # per class: round(0.3·6)=2, b has a single member (stays in train), round(0.3·5)=2
    assert len(selection.holdout_indices) == 4
    assert len(selection.train_indices) == 8
    assert all(selection.selected[selection.holdout_indices])
    assert all(selection.predicted[i] != 1 for i in selection.holdout_indices)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_holdout_never_leaves_train_empty(tmp_path: Path, fraction: float) -> None:
    for spec in ([(0, 1.0)], [(0, 1.0), (0, 2.0)], [(0, 1.0), (1, 2.0)], [(0, 1.0 + i) for i in range(5)]):
        pool = make_pool(tmp_path, class_logits(spec, classes=2))
        for keep in (0.01, 1.0):
            selection = select(
                pool, ("a", "b"), SelectionConfig(sampler="top", keep_fraction=keep, holdout_fraction=fraction)
            )
            assert len(selection.train_indices) >= 1
            assert len(selection.train_indices) + len(selection.holdout_indices) == int(selection.selected.sum())


# ----------------------------------------------------------------------------- report


def test_to_json_shape_and_serialisable(pool: PoolScores) -> None:
    selection = select(pool, CLASSES, SelectionConfig(sampler="top", keep_fraction=0.5, holdout_fraction=0.34), seed=1)
    report = selection.to_json()
    for key in (
        "method",
        "pool",
        "selected_count",
        "train_count",
        "holdout_count",
        "classes",
        "classes_below_quota",
        "manifest",
    ):
        assert key in report, key
    assert report["method"] == "eikd"
    assert report["selected_count"] == 6
    assert report["train_count"] + report["holdout_count"] == 6
    assert report["holdout_count"] >= 1
    assert report["pool"]["files"] == 12
    assert report["pool"]["decoded"] == 12
    assert report["pool"]["root"] == str(pool.root)
    assert [c["name"] for c in report["classes"]] == list(CLASSES)
    assert len(report["manifest"]) == 12
    for i, entry in enumerate(report["manifest"]):
        assert set(entry) >= {"path", "predicted", "confidence", "score", "selected", "split"}
        assert entry["path"] == pool.paths[i]
        assert entry["predicted"] == CLASSES[POOL_SPEC[i][0]]
        assert entry["selected"] == bool(selection.selected[i])
        assert entry["split"] == (selection.split[i] or None)
        assert entry["split"] in (("train", "holdout") if entry["selected"] else (None,))
    text = json.dumps(report)
    assert json.loads(text)["manifest"][10]["predicted"] == "a"
