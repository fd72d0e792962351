"""novel: candidates (unsure AND far from every class prototype), spherical k-means, silhouette, the JSON entry;
and one run on the bundled digits example, scored by its real teacher, against field_truth.csv."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from eikd_edge.novel import (
    NovelConfig,
    choose_k,
    cosine_silhouette,
    cosine_threshold,
    find_novel,
    kmeans,
    unit_rows,
)
from eikd_edge.scoring import PoolScores, score_pool

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"


def _unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def _plane_pool() -> tuple[torch.Tensor, torch.Tensor, list[str], tuple[str, ...]]:
    """2-D embeddings, 3 classes (class "c" never predicted, so its prototype is zero).

    20 confident samples (p = e^6 / (e^6 + 2) = 0.995) at ±2..±10 degrees around class a (0°) and class b (90°);
    then three pairs predicted as a, placed symmetrically about 0° so the prototypes stay exactly at 0° and 90°:
    far + unsure (±40°, p = 0.403), far + fairly sure (±30°, p = 0.787), near + unsure (±5°, p = 0.403).
    """
    rows, logits = [], []
    for offset in (2, 4, 6, 8, 10):
        for sign in (1, -1):
            rows += [_unit(sign * offset), _unit(90 + sign * offset)]
            logits += [[6.0, 0.0, 0.0], [0.0, 6.0, 0.0]]
    for angle, logit in ((40, 0.3), (30, 2.0), (5, 0.3)):
        rows += [_unit(angle), _unit(-angle)]
        logits += [[logit, 0.0, 0.0]] * 2
    paths = [f"{i:02d}.png" for i in range(len(rows))]
    return torch.tensor(logits), torch.tensor(rows), paths, ("a", "b", "c")


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
    """3 known classes (30 confident samples each, around axes 0, 1, 2) and novel blobs (uniform logits)."""
    known, known_truth = _blobs((30, 30, 30), axes=(0, 1, 2), seed=1)
    novel, novel_truth = _blobs(sizes, seed=2)
    logits = np.concatenate([8.0 * np.eye(3)[known_truth], np.zeros((len(novel), 3))])
    embeddings = np.concatenate([known, novel])
    truth = np.concatenate([np.full(len(known), -1), novel_truth])
    paths = [f"img{i:03d}.png" for i in range(len(embeddings))]
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(embeddings, dtype=torch.float32), paths, truth


def test_candidates_need_low_confidence_and_low_cosine_on_a_hand_built_plane() -> None:
    logits, embeddings, paths, classes = _plane_pool()
    report = find_novel(logits, embeddings, paths, classes, NovelConfig())
    # The 20 confident own-prototype cosines are cos 2°..cos 10°, four of each; numpy's linear 5% quantile sits
    # between the two smallest (position 0.95), both cos 10°.
    assert report.thresholds[0] == 0.5
    assert report.thresholds[1] == pytest.approx(math.cos(math.radians(10)), abs=1e-6)
    # ±40°: max cosine cos 40° = 0.766 (to a; cos 50° to b) < cos 10°, p = 0.403 < 0.5: candidates (rows 20, 21).
    # ±30°: far as well (cos 30° = 0.866) but p = 0.787: the teacher places it. ±5°: unsure but cos 5° = 0.996.
    assert report.candidates.tolist() == [20, 21]
    assert len(report.clusters) == 1  # fewer than 3 candidates: one cluster
    cluster = report.clusters[0]
    assert cluster.size == 2 and cluster.nearest_class == "a"
    assert cluster.nearest_cosine == pytest.approx(1.0, abs=1e-6)  # the centre of ±40° lies on a's axis
    assert cluster.mean_confidence == pytest.approx(math.exp(0.3) / (math.exp(0.3) + 2), abs=1e-6)
    # Stricter confidence (0.4 < 0.403): nobody. Median cosine (position 9.5 of 20: cos 6°) still leaves ±5° out,
    # the 90% quantile (position 17.1: cos 2°) takes it in; ±30° never, it is confidently placed.
    assert find_novel(logits, embeddings, paths, classes, NovelConfig(max_confidence=0.4)).candidates.size == 0
    median = find_novel(logits, embeddings, paths, classes, NovelConfig(cosine_quantile=0.5))
    assert median.thresholds[1] == pytest.approx(math.cos(math.radians(6)), abs=1e-6)
    assert median.candidates.tolist() == [20, 21]
    loose = find_novel(logits, embeddings, paths, classes, NovelConfig(cosine_quantile=0.9))
    assert loose.thresholds[1] == pytest.approx(math.cos(math.radians(2)), abs=1e-6)
    assert loose.candidates.tolist() == [20, 21, 24, 25]


def test_cosine_threshold_falls_back_to_the_whole_pool_with_fewer_than_ten_confident() -> None:
    predicted = np.zeros(11, dtype=np.int64)
    cosines = np.array([[0.9]] * 10 + [[0.1]])
    nine = np.array([0.95] * 9 + [0.5, 0.3])  # 9 confident: the 0% quantile of all 11 is 0.1
    ten = np.array([0.95] * 10 + [0.3])  # 10 confident: only their cosines count
    assert cosine_threshold(nine, cosines, predicted, 0.0) == pytest.approx(0.1)
    assert cosine_threshold(ten, cosines, predicted, 0.0) == pytest.approx(0.9)


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


def test_find_novel_clusters_the_novel_blobs_largest_first() -> None:
    logits, embeddings, paths, truth = _mixed_pool()
    report = find_novel(logits, embeddings, paths, tuple("xyz"), NovelConfig(examples=3))
    assert report.candidates.tolist() == np.flatnonzero(truth >= 0).tolist()
    assert [c.size for c in report.clusters] == [25, 15, 10] and [c.id for c in report.clusters] == [0, 1, 2]
    for cluster, label in zip(report.clusters, (0, 1, 2), strict=True):
        assert set(truth[cluster.members]) == {label}
        assert cluster.examples == [paths[i] for i in cluster.members[:3]]
        assert cluster.mean_confidence == pytest.approx(1 / 3, abs=1e-6)
        assert cluster.nearest_class == "x"  # uniform logits: predicted x, so only x's prototype leans their way
        members = unit_rows(embeddings[cluster.members].numpy().astype(np.float64))
        closeness = members @ unit_rows(members.sum(0, keepdims=True))[0]
        assert np.all(np.diff(closeness) <= 1e-12)  # closest to the centre first


def test_fixed_k_and_min_cluster() -> None:
    logits, embeddings, paths, _ = _mixed_pool()
    two = find_novel(logits, embeddings, paths, tuple("xyz"), NovelConfig(clusters=2))
    assert len(two.clusters) == 2 and sum(c.size for c in two.clusters) == 50
    big = find_novel(logits, embeddings, paths, tuple("xyz"), NovelConfig(clusters=3, min_cluster=12))
    assert [(c.id, c.size) for c in big.clusters] == [(0, 25), (1, 15)]  # the 10-sample cluster is left out
    assert big.to_json()["count"] == 50  # ... but its samples are still candidates


def test_same_seed_same_report() -> None:
    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(scale=0.3, size=(300, 4)), dtype=torch.float32)
    embeddings = torch.tensor(rng.normal(size=(300, 8)), dtype=torch.float32)
    paths = [f"{i}.png" for i in range(300)]
    config = NovelConfig(cosine_quantile=0.5)
    first, second = (find_novel(logits, embeddings, paths, tuple("abcd"), config) for _ in range(2))
    assert first.candidates.size >= 3
    assert first.to_json() == second.to_json()
    assert all(np.array_equal(a.members, b.members) for a, b in zip(first.clusters, second.clusters, strict=True))
    points = unit_rows(embeddings.numpy().astype(np.float64))
    assert np.array_equal(kmeans(points, 5, seed=7), kmeans(points, 5, seed=7))


def test_zero_candidates_give_an_empty_serialisable_report() -> None:
    logits, embeddings, paths, _ = _mixed_pool(sizes=())
    report = find_novel(logits, embeddings, paths, tuple("xyz"), NovelConfig())
    assert report.candidates.size == 0 and report.clusters == []
    data = json.loads(json.dumps(report.to_json()))
    assert data["count"] == 0 and data["pool_size"] == 90 and data["clusters"] == []
    assert set(data) == {"count", "pool_size", "max_confidence", "cosine_threshold", "clusters"}


def test_to_json_is_plain_and_rounded() -> None:
    logits, embeddings, paths, _ = _mixed_pool()
    data = find_novel(logits, embeddings, paths, tuple("xyz"), NovelConfig(examples=2)).to_json()
    assert json.loads(json.dumps(data)) == data
    assert type(data["count"]) is int and type(data["cosine_threshold"]) is float
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

    Measured with the default settings: 121 candidates, 53.7% distractors (65 of 121) against 36.0% in the pool,
    1.49x; the teacher's own style (upright white-on-black digits, 54.6% of the pool) is 18.2% of the candidates,
    the rest are inverted digits (28%), which the teacher also cannot place (17.7% top-1 on them). Margins: under
    the null "candidates are a random draw of the pool" the share's standard error at n=121 is 4.4 points, so
    base + 10 points is 2.3 sigma above chance and about 1.7 sigma below what is measured; upright digits must
    stay below half their pool share (measured: a third).
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
        f"cosine threshold {report.thresholds[1]:.4f}; {len(report.clusters)} clusters"
    )
    for cluster in report.clusters:
        composition = dict(Counter(category[cluster.members].tolist()).most_common())
        print(f"  cluster {cluster.id}: {cluster.size}, nearest {cluster.nearest_class} {composition}")
    assert len(pool.paths) == 2400 and base == pytest.approx(0.36)
    assert len(found) >= 50  # enough to mean something, few enough (5%) for a person to look at
    assert share >= base + 0.10
    assert upright_found <= 0.5 * upright_pool
    assert 2 <= len(report.clusters) <= 8 and sum(c.size for c in report.clusters) == len(found)
    json.dumps(report.to_json())
