"""novel: candidates (density + distance from the pool's bulk, robust z-scores), spherical k-means, silhouette, the
JSON entry; and one run on the bundled digits example, scored by its real teacher, against field_truth.csv."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from eikd_edge.clustering import choose_k, cosine_silhouette, kmeans, unit_rows
from eikd_edge.novel import (
    NovelConfig,
    find_novel,
    novelty_scores,
    robust_z,
)
from eikd_edge.scoring import PoolScores, score_pool

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"


def _blobs(
    sizes: tuple[int, ...], dim: int = 16, axes: tuple[int, ...] = (5, 8, 11), spread: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Tight groups around orthogonal axes, each point scaled by a random length (cosine geometry ignores it)."""
    rng = np.random.default_rng(seed)
    points, truth = [], []
    for label, (size, axis) in enumerate(zip(sizes, axes, strict=False)):
        centre = np.zeros(dim)
        centre[axis] = 1.0
        group = centre + spread * rng.normal(size=(size, dim))
        points.append(group * rng.uniform(0.5, 3.0, size=(size, 1)))
        truth += [label] * size
    return (np.concatenate(points) if points else np.zeros((0, dim))), np.array(truth, dtype=np.int64)


def _purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of points whose cluster's majority true label is their own label, and one cluster per label."""
    if len(np.unique(labels)) != len(np.unique(truth)):
        return 0.0
    hits = sum(Counter(truth[labels == c]).most_common(1)[0][1] for c in np.unique(labels))
    return hits / len(labels)


def _mixed_pool(sizes: tuple[int, ...] = (25, 15, 10)) -> tuple[torch.Tensor, torch.Tensor, list[str], np.ndarray]:
    """3 known classes (200 confident samples each, broadly spread around axes 0, 1, 2) and novel blobs (uniform
    logits) far out on other axes."""
    known, known_truth = _blobs((200, 200, 200), axes=(0, 1, 2), spread=0.3, seed=1)
    novel, novel_truth = _blobs(sizes, seed=2)
    known, novel = unit_rows(known), 3.0 * unit_rows(novel)  # cosine geometry is unchanged; distance is clear
    logits = np.concatenate([8.0 * np.eye(3)[known_truth], np.zeros((len(novel), 3))])
    embeddings = np.concatenate([known, novel])
    truth = np.concatenate([np.full(len(known), -1), novel_truth])
    paths = [f"img{i:03d}.png" for i in range(len(embeddings))]
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(embeddings, dtype=torch.float32), paths, truth


def _field_pool(
    tight: int = 100, far: int = 100, per_class: int = 200, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[str], np.ndarray]:
    """4 known classes (confident, moderately spread, sharing a common positive base like post-ReLU features), a
    tight group amid them that the teacher still calls class 0 at p = 0.87 (the noise of the issue), and a
    broad group off in a direction no class uses (distractors, uniform logits). kind: in / tight / far."""
    rng = np.random.default_rng(seed)
    dim = 32
    base = np.zeros(dim)
    base[:16] = 0.3
    rows, logits, kind = [], [], []
    for c in range(4):
        centre = base.copy()
        centre[c] += 1.0
        rows.append((centre + 0.25 * rng.normal(size=(per_class, dim))) * rng.uniform(0.8, 1.2, (per_class, 1)))
        logits.append(5.0 * np.eye(4)[np.full(per_class, c)])
        kind += ["in"] * per_class
    noise = base.copy()
    noise[:4] += 0.5  # amid the classes: only its tightness gives it away
    rows.append(noise + 0.01 * rng.normal(size=(tight, dim)))
    logits.append(np.tile([4.0, 1.0, 1.0, 1.0], (tight, 1)))
    off = base.copy()
    off[20] = 1.5
    rows.append(2.0 * (off + 0.5 * rng.normal(size=(far, dim))))
    logits.append(np.zeros((far, 4)))
    kind += ["tight"] * tight + ["far"] * far
    paths = [f"f{i:04d}.png" for i in range(len(kind))]
    as_tensor = lambda a: torch.tensor(np.concatenate(a), dtype=torch.float32)  # noqa: E731
    return as_tensor(logits), as_tensor(rows), paths, np.array(kind)


def _flagged_share(report_candidates: np.ndarray, kind: np.ndarray) -> dict[str, float]:
    flagged = np.zeros(len(kind), dtype=bool)
    flagged[report_candidates] = True
    return {k: float(flagged[kind == k].mean()) for k in np.unique(kind)}


def test_a_confident_tight_noise_group_and_an_off_distribution_group_are_found() -> None:
    """The issue's failure: noise the teacher calls one class with confidence, in a group of near-identical
    embeddings, was never flagged (the old rule needed confidence < 0.5). Aim: >= 80% of it, >= 50% of the
    distractors, <= 10% of the in-class images."""
    logits, embeddings, paths, kind = _field_pool()
    report = find_novel(logits, embeddings, paths, tuple("abcd"), NovelConfig())
    share = _flagged_share(report.candidates, kind)
    assert share["tight"] >= 0.8 and share["far"] >= 0.5 and share["in"] <= 0.10, share
    tight = set(np.flatnonzero(kind == "tight").tolist())
    assert any(len(tight & set(c.members.tolist())) >= 0.8 * c.size for c in report.clusters)  # its own cluster


@pytest.mark.parametrize("seed", range(3))
def test_a_pool_without_novel_images_is_barely_flagged(seed: int) -> None:
    """The threshold is in units of the pool's own spread, not a share of it: a clean pool keeps <= 10% flagged."""
    logits, embeddings, paths, _ = _field_pool(tight=0, far=0, seed=seed)
    report = find_novel(logits, embeddings, paths, tuple("abcd"), NovelConfig())
    assert len(report.candidates) <= 0.10 * len(paths)


def test_flagged_count_follows_the_novel_images_not_the_pool_size() -> None:
    """200 novel images added to a clean pool of 800: at least 150 more flags, while the in-class flags stay few."""
    clean, mixed = (_field_pool(tight=n, far=n) for n in (0, 100))
    counts = [len(find_novel(lg, em, p, tuple("abcd"), NovelConfig()).candidates) for lg, em, p, _ in (clean, mixed)]
    assert counts[0] <= 80 and counts[1] - counts[0] >= 150, counts


def test_robust_z_ignores_a_large_outlying_group_and_a_flat_signal() -> None:
    values = np.concatenate([np.linspace(-1.0, 1.0, 70), np.full(30, 50.0)])  # 30% far out
    z = robust_z(values)
    assert np.all(z[70:] > 10) and np.all(np.abs(z[:70]) < 3)
    assert np.array_equal(robust_z(np.ones(5)), np.zeros(5))
    assert np.array_equal(novelty_scores(np.ones((2, 4)), 200, 0), np.zeros(2))  # too few samples to score


def test_threshold_trades_flags_for_precision() -> None:
    logits, embeddings, paths, _ = _field_pool()
    counts = [
        len(find_novel(logits, embeddings, paths, tuple("abcd"), NovelConfig(threshold=t)).candidates)
        for t in (0.5, 1.5, 5.0)
    ]
    assert counts[0] > counts[1] > counts[2]


def test_kmeans_recovers_separated_clusters_exactly() -> None:
    points, truth = _blobs((40, 25, 15))
    labels = kmeans(unit_rows(points), 3, seed=0)
    assert _purity(labels, truth) == 1.0
    for seed in range(5):  # k-means++ seeding lands in each blob whatever the seed
        assert _purity(kmeans(unit_rows(points), 3, seed=seed), truth) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_silhouette_matches_sklearn(seed: int) -> None:
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    points = rng.normal(size=(60 + 20 * seed, 5))
    labels = rng.integers(0, 2 + seed, size=len(points))
    labels[0] = 7  # a singleton cluster: silhouette 0 by definition
    assert cosine_silhouette(points, labels) == pytest.approx(
        silhouette_score(points, labels, metric="cosine"), abs=1e-5
    )
    blobs, truth = _blobs((20, 20, 20))
    assert cosine_silhouette(blobs, truth) == pytest.approx(silhouette_score(blobs, truth, metric="cosine"), abs=1e-5)


def test_silhouette_rejects_a_single_cluster() -> None:
    with pytest.raises(ValueError, match="2 to n-1"):
        cosine_silhouette(np.ones((4, 2)), np.zeros(4))


def test_auto_k_picks_three_for_three_blobs() -> None:
    points, truth = _blobs((30, 20, 10))
    k, labels = choose_k(unit_rows(points), seed=0)
    assert k == 3 and _purity(labels, truth) == 1.0


CLEAR = 10.0  # novelty-score threshold for _mixed_pool: the novel blobs score about 20, the known samples below 6


def test_find_novel_clusters_the_novel_blobs_largest_first() -> None:
    logits, embeddings, paths, truth = _mixed_pool()
    report = find_novel(logits, embeddings, paths, tuple("xyz"), NovelConfig(examples=3, threshold=CLEAR))
    assert report.candidates.tolist() == np.flatnonzero(truth >= 0).tolist()
    assert [c.size for c in report.clusters] == [25, 15, 10] and [c.id for c in report.clusters] == [0, 1, 2]
    for cluster, label in zip(report.clusters, (0, 1, 2), strict=True):
        assert set(truth[cluster.members]) == {label}
        assert cluster.examples == [paths[i] for i in cluster.members[:3]]
        assert cluster.mean_confidence == pytest.approx(1 / 3, abs=1e-6)
        assert cluster.nearest_class in "xyz" and -1.0 <= cluster.nearest_cosine <= 1.0
        members = unit_rows(embeddings[cluster.members].numpy().astype(np.float64))
        closeness = members @ unit_rows(members.sum(0, keepdims=True))[0]
        assert np.all(np.diff(closeness) <= 1e-12)  # closest to the centre first


def test_fixed_k_and_min_cluster() -> None:
    logits, embeddings, paths, _ = _mixed_pool()
    two = find_novel(logits, embeddings, paths, tuple("xyz"), NovelConfig(clusters=2, threshold=CLEAR))
    assert len(two.clusters) == 2 and sum(c.size for c in two.clusters) == 50
    big = find_novel(logits, embeddings, paths, tuple("xyz"), NovelConfig(clusters=3, min_cluster=12, threshold=CLEAR))
    assert [(c.id, c.size) for c in big.clusters] == [(0, 25), (1, 15)]  # the 10-sample cluster is left out
    assert big.to_json()["count"] == 50  # ... but its samples are still candidates


def test_same_seed_same_report() -> None:
    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(scale=0.3, size=(300, 4)), dtype=torch.float32)
    embeddings = torch.tensor(rng.normal(size=(300, 8)), dtype=torch.float32)
    paths = [f"{i}.png" for i in range(300)]
    config = NovelConfig(threshold=1.0)
    first, second = (find_novel(logits, embeddings, paths, tuple("abcd"), config) for _ in range(2))
    assert first.candidates.size >= 3
    assert first.to_json() == second.to_json()
    assert all(np.array_equal(a.members, b.members) for a, b in zip(first.clusters, second.clusters, strict=True))
    points = unit_rows(embeddings.numpy().astype(np.float64))
    assert np.array_equal(kmeans(points, 5, seed=7), kmeans(points, 5, seed=7))


def test_zero_candidates_give_an_empty_serialisable_report() -> None:
    logits, embeddings, paths, _ = _mixed_pool(sizes=())
    report = find_novel(logits, embeddings, paths, tuple("xyz"), NovelConfig(threshold=CLEAR))
    assert report.candidates.size == 0 and report.clusters == []
    data = json.loads(json.dumps(report.to_json()))
    assert data["count"] == 0 and data["pool_size"] == 600 and data["clusters"] == []
    assert set(data) == {"count", "pool_size", "rule", "score_threshold", "clusters"}


def test_to_json_is_plain_and_rounded() -> None:
    logits, embeddings, paths, _ = _mixed_pool()
    data = find_novel(logits, embeddings, paths, tuple("xyz"), NovelConfig(examples=2, threshold=CLEAR)).to_json()
    assert json.loads(json.dumps(data)) == data
    assert type(data["count"]) is int and type(data["score_threshold"]) is float
    cluster = data["clusters"][0]
    assert set(cluster) == {"id", "size", "nearest_class", "nearest_cosine", "mean_confidence", "examples"}
    assert type(cluster["id"]) is int and type(cluster["size"]) is int and len(cluster["examples"]) == 2
    assert cluster["mean_confidence"] == 0.3333
    assert round(cluster["nearest_cosine"], 4) == cluster["nearest_cosine"]


def test_inconsistent_shapes_and_bad_settings_are_refused() -> None:
    logits, embeddings, paths, _ = _mixed_pool()
    with pytest.raises(ValueError, match="shapes disagree"):
        find_novel(logits, embeddings, paths[:-1], tuple("xyz"), NovelConfig())
    with pytest.raises(ValueError):
        NovelConfig(clusters=0)


@pytest.fixture(scope="module")
def digits_pool() -> tuple[PoolScores, tuple[str, ...]]:
    """The real teacher over the 2,400 field images (about 10 s on CPU), once for the module."""
    from eikd_edge.models.teacher import load_teacher

    teacher = load_teacher(EXAMPLE / "teacher.pt")
    return score_pool(teacher, EXAMPLE / "field", torch.device("cpu"), 256), teacher.spec.classes


def test_real_digits_candidates_are_enriched_in_distractors(digits_pool: tuple[PoolScores, tuple[str, ...]]) -> None:
    """The bundled open-world pool: 36% distractors (letters, photo patches, noise), 9% inverted digits.

    Measured with the default settings: 511 candidates, 94.3% distractors (482 of 511) against 36.0% in the pool
    (the rule before it flagged 121 at 53.7%); upright digits, the teacher's own style, are 3.3% of the candidates
    against 54.6% of the pool. Margins: at least 300 candidates (the pool holds 864 distractors), at least 85%
    distractors, upright digits under a tenth of the candidates.
    """
    pool, classes = digits_pool
    with (EXAMPLE / "field_truth.csv").open(newline="") as handle:
        truth = {row["filename"]: row for row in csv.DictReader(handle)}
    category = np.array(
        [
            ("inverted digit" if truth[p]["inverted"] == "1" else "digit")
            if truth[p]["kind"] == "digit"
            else truth[p]["kind"]
            for p in pool.paths
        ]
    )
    distractor = ~np.isin(category, ["digit", "inverted digit"])
    report = find_novel(pool.logits, pool.embeddings, pool.paths, tuple(classes), NovelConfig())
    found = report.candidates
    base, share = float(distractor.mean()), float(distractor[found].mean())
    upright_pool, upright_found = float((category == "digit").mean()), float((category[found] == "digit").mean())
    print(
        f"\npool {len(pool.paths)}, distractors {base:.3f}; candidates {len(found)}, distractors {share:.3f}, "
        f"upright digits {upright_found:.3f} (pool {upright_pool:.3f}); "
        f"score threshold {report.threshold:.2f}; {len(report.clusters)} clusters"
    )
    for cluster in report.clusters:
        composition = dict(Counter(category[cluster.members].tolist()).most_common())
        print(f"  cluster {cluster.id}: {cluster.size}, nearest {cluster.nearest_class} {composition}")
    assert len(pool.paths) == 2400 and base == pytest.approx(0.36)
    assert len(found) >= 300
    assert share >= 0.85
    assert upright_found <= 0.1
    assert 2 <= len(report.clusters) <= 8 and sum(c.size for c in report.clusters) == len(found)
    json.dumps(report.to_json())
