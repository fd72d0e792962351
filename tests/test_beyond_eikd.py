"""ODSD sampling, BatchNorm statistics, soft-targeted synthesis and the new CLI switches, on hand-computed
values and tiny real runs."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.config import SelectionConfig, SynthesisConfig
from eikd_edge.errors import EikdError
from eikd_edge.models.bn_stats import (
    BatchNormDeviation,
    BatchNormTaps,
    batch_statistics_loss,
    batchnorm_layers,
    per_sample_deviation,
)
from eikd_edge.models.teacher import load_teacher
from eikd_edge.models.zoo import build_model
from eikd_edge.pool_scores import merge_pools
from eikd_edge.selection import select
from eikd_edge.selection_scores import gumbel_keys, odsd_closeness, percentile_ranks
from eikd_edge.synthesis import (
    MANIFEST,
    balanced_classes,
    check_output_folder,
    sample_normalised_logits,
    soft_target_loss,
    synthesize,
    total_variation,
)
from tests.conftest import save_torchscript, tiny_classifier, write_sidecar
from tests.test_selection import CLASSES, class_logits, make_pool

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"


# ----------------------------------------------------------------------------- BatchNorm statistics


def _bn_layer() -> nn.BatchNorm2d:
    layer = nn.BatchNorm2d(2).eval()
    layer.running_mean.copy_(torch.tensor([1.0, -1.0]))
    layer.running_var.copy_(torch.tensor([4.0, 1.0]))
    return layer


def test_per_sample_deviation_hand_value() -> None:
    layer = _bn_layer()
    x = torch.tensor([[1.0, -1.0], [3.0, 0.0]]).view(2, 2, 1, 1)  # sample 0 sits on the running means
    deviation = per_sample_deviation([(x, layer)])
    # sample 1: ((3 - 1)² / 4 + (0 + 1)² / 1) / 2 = 1
    assert deviation.tolist() == pytest.approx([0.0, 1.0], abs=1e-4)


def test_batch_statistics_loss_hand_value() -> None:
    layer = _bn_layer()
    x = torch.tensor([[1.0, -1.0], [3.0, 0.0]]).view(2, 2, 1, 1)
    # batch means (2, -0.5) vs (1, -1); batch variances (1, 0.25) vs (4, 1)
    expected = math.sqrt(1.0 + 0.25) + math.sqrt(9.0 + 0.5625)
    assert float(batch_statistics_loss([(x, layer)])) == pytest.approx(expected, rel=1e-6)


def test_batchnorm_taps_capture_each_layer_once_per_forward_and_detach_cleanly() -> None:
    model = build_model("cifar_resnet8", 10, width=0.5).eval()
    taps = BatchNormTaps(model)
    assert len(taps.layers) == len(batchnorm_layers(model)) > 0
    model(torch.randn(3, 3, 32, 32))
    captured = taps.pop()
    assert len(captured) == len(taps.layers) and all(x.shape[0] == 3 for x, _ in captured)
    taps.remove()
    model(torch.randn(1, 3, 32, 32))
    assert taps.pop() == []


def test_the_scoring_pass_reduces_each_layer_as_it_runs_to_the_hand_checked_deviation() -> None:
    """What the scoring pass records per image equals per_sample_deviation over the captured inputs (checked by
    hand above), while it keeps one number per image and layer instead of the layer's whole input."""
    model = build_model("cifar_resnet8", 10, width=0.5).eval()
    for layer in batchnorm_layers(model):
        layer.running_mean.normal_(generator=torch.Generator().manual_seed(1))
        layer.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    taps, deviation = BatchNormTaps(model), BatchNormDeviation(model)
    with torch.no_grad():
        model(images)
    held = deviation._per_layer
    assert len(held) == len(batchnorm_layers(model)) and all(d.shape == (5,) for d in held)
    expected = per_sample_deviation(taps.pop())
    assert torch.equal(deviation.pop(), expected) and float(expected.std()) > 0
    deviation.remove()
    with torch.no_grad():
        model(images)
    assert deviation._per_layer == []


def test_torchscript_hides_its_batchnorm_layers_until_the_arch_is_named(tmp_path: Path) -> None:
    path = save_torchscript(tiny_classifier(), tmp_path / "t.pt")
    write_sidecar(path)
    opaque = load_teacher(path)
    assert batchnorm_layers(opaque.module) == []
    with pytest.raises(EikdError, match="does not fit --teacher-arch cifar_resnet20"):
        load_teacher(path, "cifar_resnet20")
    # the named arch must fit exactly (this one is width 0.5); the bundled example names the right one
    teacher = load_teacher(EXAMPLE / "teacher.pt")  # its sidecar names arch: cifar_resnet20
    assert teacher.format == "torchscript" and len(batchnorm_layers(teacher.module)) == 21
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still read
        script = torch.jit.load(str(EXAMPLE / "teacher.pt"))
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(teacher.predict(x)[0], script(x), atol=1e-4)


def test_teacher_parameters_never_take_gradients() -> None:
    teacher = load_teacher(EXAMPLE / "teacher.pt")
    assert not any(p.requires_grad for p in teacher.module.parameters())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    teacher.forward_logits(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- ODSD sampling


def test_percentile_ranks_hand_value_with_ties() -> None:
    assert percentile_ranks(torch.tensor([3.0, 1.0, 2.0, 2.0])).tolist() == pytest.approx([1.0, 0.0, 0.5, 0.5])


def test_odsd_closeness_averages_prototype_and_batchnorm_ranks() -> None:
    logits = class_logits([(0, 3.0), (0, 3.0), (1, 3.0)])
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    probs = logits.softmax(dim=1)
    from_prototypes = odsd_closeness(probs, embeddings, None)
    # class 0's prototype lies between samples 0 and 1, so both have the same cosine; sample 2 is its own prototype
    assert from_prototypes.tolist() == pytest.approx([0.25, 0.25, 1.0])
    with_bn = odsd_closeness(probs, embeddings, torch.tensor([0.0, 5.0, 10.0]))  # sample 0 closest to the BN stats
    assert with_bn.tolist() == pytest.approx([(0.25 + 1.0) / 2, (0.25 + 0.5) / 2, (1.0 + 0.0) / 2])


def test_gumbel_keys_sample_in_proportion_to_exp_closeness() -> None:
    closeness = np.array([1.0, 0.0])
    rng = np.random.default_rng(0)
    firsts = [int(np.argmax(gumbel_keys(closeness, 1.0, rng))) for _ in range(20000)]
    # P(first = 0) = e / (e + 1) = 0.731
    assert np.mean(np.array(firsts) == 0) == pytest.approx(math.e / (math.e + 1), abs=0.01)
    cold = [int(np.argmax(gumbel_keys(closeness, 1e-3, rng))) for _ in range(200)]
    assert set(cold) == {0}  # a cold temperature is top-k


def test_odsd_sampler_is_seeded_balanced_and_recorded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    n = 60
    logits = class_logits([(i % 3, 1.0 + (i % 7)) for i in range(n)])
    embeddings = torch.randn(n, 8)
    pool = make_pool(tmp_path, logits, embeddings)
    config = SelectionConfig(sampler="odsd", keep_fraction=0.5, holdout_fraction=0.0)
    first, again, other = select(pool, CLASSES, config, seed=0), select(pool, CLASSES, config, seed=0), None
    other = select(pool, CLASSES, config, seed=1)
    assert first.selected.sum() == 30 and [c["selected"] for c in first.per_class] == [10, 10, 10]
    assert (first.selected == again.selected).all() and (first.selected != other.selected).any()
    assert first.to_json()["sampler"] == "odsd" and first.closeness_from == ["prototype cosine"]
    top = select(pool, CLASSES, SelectionConfig(sampler="top", keep_fraction=0.5, holdout_fraction=0.0))
    assert top.to_json()["sampler"] == "top" and top.closeness_from == []


def test_odsd_prefers_images_close_to_the_batchnorm_statistics(tmp_path: Path) -> None:
    n = 200
    logits = class_logits([(i % 2, 2.0) for i in range(n)], classes=2)
    embeddings = torch.ones(n, 4)  # identical prototype cosine: only BN closeness separates samples
    pool = make_pool(tmp_path, logits, embeddings)
    pool = type(pool)(**{**pool.__dict__, "bn_deviation": torch.arange(n, dtype=torch.float32)})
    chosen = select(pool, ("a", "b"), SelectionConfig(sampler="odsd", keep_fraction=0.25, holdout_fraction=0.0))
    picked = np.flatnonzero(chosen.selected)
    assert picked.mean() < 0.6 * (n - 1) / 2  # far below the middle of the pool: closer images win
    assert picked.max() > n / 4  # but sampled, not thresholded: some farther images are kept too
    assert chosen.closeness_from == ["prototype cosine", "BatchNorm statistics"]


def test_merge_pools_rebases_paths_on_the_common_root(tmp_path: Path) -> None:
    a = make_pool(tmp_path / "field", class_logits([(0, 1.0), (1, 2.0)]))
    b = make_pool(tmp_path / "run" / "synthetic", class_logits([(2, 1.0)]))
    merged = merge_pools(a, b)
    assert merged.root == tmp_path.resolve()
    assert merged.paths == ["field/img000.png", "field/img001.png", "run/synthetic/img000.png"]
    assert merged.logits.shape == (3, 3) and merged.files == 3 and merged.bn_deviation is None


# ----------------------------------------------------------------------------- synthesis: the mathematics


W = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # normalised rows: e0, e1, (e0 + e1)/√2


def class_similarity(classifier_weight: torch.Tensor) -> torch.Tensor:
    """S = W̃W̃ᵀ, the covariance the sampled logits must follow (only these tests need it spelled out)."""
    normed = nn.functional.normalize(classifier_weight.float(), dim=1)
    return normed @ normed.T


def test_noise_free_logits_are_scaled_class_similarity() -> None:
    z = sample_normalised_logits(W, torch.tensor([0, 2]), 2.0, 0.0, torch.Generator().manual_seed(0))
    assert z.flatten().tolist() == pytest.approx((2.0 * class_similarity(W)[[0, 2]]).flatten().tolist(), abs=1e-6)


def test_sampled_logits_follow_the_class_similarity_normal() -> None:
    generator = torch.Generator().manual_seed(0)
    z = sample_normalised_logits(W, torch.zeros(40000, dtype=torch.long), 3.0, 0.5, generator)
    s = class_similarity(W)
    assert z.mean(dim=0).tolist() == pytest.approx((3.0 * s[0]).tolist(), abs=0.02)
    assert torch.cov(z.T).flatten().tolist() == pytest.approx((0.25 * s).flatten().tolist(), abs=0.01)


def test_total_variation_hand_value() -> None:
    image = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    assert float(total_variation(image)) == pytest.approx(1.0 + 4.0)


def test_soft_target_loss_is_zero_at_the_target_and_positive_elsewhere() -> None:
    targets = torch.tensor([[0.7, 0.2, 0.1]])
    assert float(soft_target_loss(targets.log(), targets)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_target_loss(torch.zeros(1, 3), targets)) == pytest.approx(
        sum(p * math.log(p / (1 / 3)) for p in (0.7, 0.2, 0.1)), rel=1e-5
    )


def test_balanced_classes_cover_every_class_equally() -> None:
    counts = torch.bincount(balanced_classes(23, 10, torch.Generator().manual_seed(0)), minlength=10)
    assert counts.max() - counts.min() <= 1 and int(counts.sum()) == 23


# ----------------------------------------------------------------------------- synthesis: real runs


def test_synthesis_makes_the_real_teacher_reproduce_its_targets(tmp_path: Path) -> None:
    teacher = load_teacher(EXAMPLE / "teacher.pt")
    config = SynthesisConfig(steps=40, batch_size=20)
    result = synthesize(teacher, 20, config, tmp_path / "syn", torch.device("cpu"))
    manifest = json.loads((tmp_path / "syn" / MANIFEST).read_text())
    assert result.bn_prior and manifest["bn_prior"] and len(manifest["images"]) == 20
    assert result.fit >= 0.8  # random noise would land in its target class 10% of the time
    first = Image.open(tmp_path / "syn" / manifest["images"][0]["path"])
    assert first.size == (32, 32) and first.mode == "RGB"
    stamp = (tmp_path / "syn" / "synth_000000.png").stat().st_mtime_ns
    again = synthesize(teacher, 20, config, tmp_path / "syn", torch.device("cpu"))
    assert again.reused and (tmp_path / "syn" / "synth_000000.png").stat().st_mtime_ns == stamp
    changed = synthesize(teacher, 10, config, tmp_path / "syn", torch.device("cpu"))
    assert not changed.reused and len(list((tmp_path / "syn").glob("synth_*.png"))) == 10


def test_output_folder_rules(tmp_path: Path) -> None:
    check_output_folder(tmp_path / "new", overwrite=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "synth_000000.png").write_bytes(b"")
    with pytest.raises(EikdError, match="--overwrite"):
        check_output_folder(mine, overwrite=False)
    check_output_folder(mine, overwrite=True)
    (mine / "holiday.jpg").write_bytes(b"")
    with pytest.raises(EikdError, match="other files"):
        check_output_folder(mine, overwrite=True)


def test_synthesize_cli_writes_images_and_refuses_to_clobber(tmp_path: Path, script_teacher: Path) -> None:
    out = tmp_path / "syn"
    args = ["synthesize", "-t", str(script_teacher), "--count", "6", "--steps", "2", "-o", str(out)]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "wrote 6 images" in result.stdout and "BatchNorm prior off" in result.stdout  # TorchScript: opaque
    assert len(list(out.glob("synth_*.png"))) == 6
    again = runner.invoke(app, args, terminal_width=200)
    assert again.exit_code == 1 and "--overwrite" in again.output


# ----------------------------------------------------------------------------- the switches end to end


FAST = ["train.steps=3", "train.batch_size=16", "student.width=0.5", "selection.batch_size=64"]


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_distill_with_odsd_contrastive_and_curriculum(tmp_path: Path, digit_images: Path) -> None:
    out = tmp_path / "run"
    args = ["distill", "-t", str(EXAMPLE / "teacher.pt"), "-u", str(digit_images), "-o", str(out), "--select",
            "odsd", "--relation", "contrastive", "--curriculum", "selfpaced"]  # fmt: skip
    result = runner.invoke(app, args + _sets(FAST), terminal_width=200)
    assert result.exit_code == 0, result.output
    selection = json.loads((out / "selection.json").read_text())
    assert selection["closeness_from"] == ["prototype cosine", "BatchNorm statistics"]
    loss = json.loads((out / "metrics.json").read_text())["history"][-1]["loss"]
    assert 0 < loss["curriculum_weight"] <= 1 and loss["relation"] > 0
    recipe = (out / "recipe.resolved.yaml").read_text()
    assert "kind: contrastive" in recipe and "mode: selfpaced" in recipe and "sampler: odsd" in recipe


def test_data_free_distill_with_synthesis_only(tmp_path: Path, script_teacher: Path) -> None:
    out = tmp_path / "run"
    args = ["distill", "-t", str(script_teacher), "-o", str(out), "--synthesize", "24"]
    result = runner.invoke(app, args + _sets([*FAST, "synthesis.steps=2", "synthesis.batch_size=12"]))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["synthesis"]["count"] == 24 and not metrics["synthesis"]["reused"]
    selection = json.loads((out / "selection.json").read_text())
    assert selection["pool"]["files"] == 24 and all(e["path"].startswith("synth_") for e in selection["manifest"])
    rerun = runner.invoke(app, [*args, "--overwrite", *_sets([*FAST, "synthesis.steps=2", "synthesis.batch_size=12"])])
    assert rerun.exit_code == 0 and json.loads((out / "metrics.json").read_text())["synthesis"]["reused"]


def test_synthesis_mixes_into_a_field_pool(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    out = tmp_path / "run"
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(out), "--synthesize", "12"]
    result = runner.invoke(app, args + _sets([*FAST, "synthesis.steps=2"]))
    assert result.exit_code == 0, result.output
    paths = [e["path"] for e in json.loads((out / "selection.json").read_text())["manifest"]]
    assert sum(p.endswith(".png") and "synth_" in p for p in paths) == 12
    assert len(paths) == 120 + 12  # 120 decodable field images and the synthetic ones, one pool


def test_no_images_at_all_is_one_line(tmp_path: Path, script_teacher: Path) -> None:
    result = runner.invoke(app, ["distill", "-t", str(script_teacher), "-o", str(tmp_path / "r")])
    assert result.exit_code == 1 and "--synthesize N" in result.output and "Traceback" not in result.output


def test_select_novel_writes_clusters(tmp_path: Path, digit_images: Path) -> None:
    out = tmp_path / "sel"
    args = ["select", "-t", str(EXAMPLE / "teacher.pt"), "-u", str(digit_images), "-o", str(out), "--novel",
            "--novel-clusters", "2"]  # fmt: skip
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    novel = json.loads((out / "selection.json").read_text())["novel"]
    assert novel["pool_size"] == 120 and "novel:" in result.stdout
    assert sum(c["size"] for c in novel["clusters"]) == novel["count"]
