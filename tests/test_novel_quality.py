"""benchmarks.novel_quality: the purity of each reported cluster is taken over that cluster's own members and the
source family is the part of `source` before the first ':'."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.novel_quality import cluster_purity, report_purity, source_family
from eikd_edge.novel import NovelCluster


def _truth() -> tuple[list[str], dict[str, dict[str, str]]]:
    """Ten pool images: sources in the three forms of the task truth files (family:detail, family:detail:letter,
    no prefix at all)."""
    sources = [
        ("distractor", "letter:DejaVuSans:A"),  # 0
        ("noise", "noise:sparse"),  # 1
        ("distractor", "letter:cmb10"),  # 2
        ("in-class", "digit:cmb10"),  # 3
        ("distractor", "photo:brick"),  # 4
        ("noise", "noise:blobs"),  # 5
        ("distractor", "letter:STIXGeneral:q"),  # 6
        ("noise", "noise:smooth"),  # 7
        ("distractor", "brick"),  # 8
        ("noise", "noise:uniform"),  # 9
    ]
    paths = [f"{i:06d}.png" for i in range(len(sources))]
    return paths, {p: {"path": p, "kind": k, "source": s} for p, (k, s) in zip(paths, sources, strict=True)}


def _cluster(number: int, members: list[int], nearest: str) -> NovelCluster:
    return NovelCluster(number, len(members), np.array(members, dtype=np.int64), nearest, 0.5, 0.9, [])


def test_family_is_the_part_before_the_first_colon() -> None:
    assert source_family("letter:DejaVuSans-Bold:A") == "letter"
    assert source_family("noise:sparse") == "noise"
    assert source_family("brick") == "brick"  # natural-photos: no prefix, the photograph itself


def test_purity_counts_only_the_clusters_own_members() -> None:
    paths, truth = _truth()
    # letters 0, 2, 6 (three fonts, with and without a letter suffix), one digit, one photo; the noise at 1, 5, 7,
    # 9 lies between the members in pool order and is no part of the cluster.
    letters = cluster_purity(np.array([6, 0, 3, 2, 4]), paths, truth)
    assert letters["size"] == 5
    assert letters["family"] == "letter"
    assert letters["purity"] == pytest.approx(3 / 5)
    assert letters["kinds"] == pytest.approx({"in-class": 1 / 5, "distractor": 4 / 5, "noise": 0.0})

    noise = cluster_purity(np.array([9, 1, 8, 5]), paths, truth)
    assert (noise["family"], noise["purity"]) == ("noise", pytest.approx(3 / 4))
    assert noise["kinds"] == pytest.approx({"in-class": 0.0, "distractor": 1 / 4, "noise": 3 / 4})


def test_report_purity_keeps_cluster_order_and_weights_by_size() -> None:
    paths, truth = _truth()
    clusters = [_cluster(0, [6, 0, 3, 2, 4], "3"), _cluster(1, [9, 1, 8, 5], "8"), _cluster(2, [7], "0")]
    rows, mean = report_purity(clusters, paths, truth)
    assert [(r["id"], r["nearest_class"], r["size"], r["family"]) for r in rows] == [
        (0, "3", 5, "letter"),
        (1, "8", 4, "noise"),
        (2, "0", 1, "noise"),
    ]
    assert mean == pytest.approx((3 + 3 + 1) / 10)
    assert report_purity([], paths, truth) == ([], None)
