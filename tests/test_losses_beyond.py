"""ODSD's denoised contrastive relation and CuDFKD's self-paced weights against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from eikd_edge.config import load_recipe
from eikd_edge.distill.losses import (
    class_drop_kd,
    contrastive_relation_loss,
    feature_loss,
    relation_loss,
    selfpaced_lambda,
    selfpaced_weights,
)
from eikd_edge.distill.step import distillation_loss, uses_projector

EYE2 = torch.eye(2)
SURE = torch.tensor([[50.0, 0.0], [0.0, 50.0]])  # teacher: sample 0 is class 0, sample 1 class 1, certainly


# ----------------------------------------------------------------------------- contrastive relation


def test_contrastive_relation_hand_value_for_a_reliable_negative_pair() -> None:
    # s_i·t_j / τ = identity; w_01 = 1 - p_0·p_1 = 1: L_i = log(e + 1) - 1 for both rows
    loss = contrastive_relation_loss(EYE2, EYE2, SURE, temperature=1.0, reduction="none")
    assert loss.tolist() == pytest.approx([math.log(math.e + 1) - 1] * 2, abs=1e-6)


def test_contrastive_relation_ignores_a_pair_the_teacher_puts_in_one_class() -> None:
    same_class = torch.tensor([[50.0, 0.0], [50.0, 0.0]])  # w_01 = 0: the pair is a false negative
    loss = contrastive_relation_loss(EYE2, EYE2, same_class, temperature=1.0, reduction="none")
    assert loss.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_contrastive_relation_half_weights_a_pair_the_teacher_is_unsure_of() -> None:
    unsure = torch.zeros(2, 2)  # p = (½, ½) for both: P(different classes) = ½
    loss = contrastive_relation_loss(EYE2, EYE2, unsure, temperature=1.0)
    assert float(loss) == pytest.approx(math.log(math.e + 0.5) - 1, abs=1e-6)


def test_contrastive_relation_temperature_and_normalisation() -> None:
    s = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # lengths do not matter, only directions
    loss = contrastive_relation_loss(s, EYE2 * 7, SURE, temperature=0.5)
    assert float(loss) == pytest.approx(math.log(math.exp(2) + 1) - 2, abs=1e-6)


def test_contrastive_relation_is_lower_when_student_matches_teacher() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(16, 8)
    logits = torch.randn(16, 5)
    matched = contrastive_relation_loss(teacher + 0.01 * torch.randn(16, 8), teacher, logits, 0.1)
    shuffled = contrastive_relation_loss(teacher[torch.randperm(16)], teacher, logits, 0.1)
    assert float(matched) < float(shuffled)


def test_contrastive_relation_gradient_is_finite_when_every_pair_is_one_class() -> None:
    s = torch.randn(4, 3, requires_grad=True)
    loss = contrastive_relation_loss(s, torch.randn(4, 3), torch.tensor([[30.0, 0.0]] * 4), 0.1)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


# ----------------------------------------------------------------------------- self-paced curriculum


def test_selfpaced_weight_hand_values() -> None:
    lam = 2.0
    v = selfpaced_weights(torch.tensor([0.0, lam, 100.0]), lam)
    assert v.tolist() == pytest.approx([1.0, (1 + math.exp(-lam)) / 2, 0.0], abs=1e-6)
    # λ = 0: v = 2 / (1 + e^ℓ); ℓ = ln 3 gives exactly ½
    assert float(selfpaced_weights(torch.tensor([math.log(3.0)]), 0.0)) == pytest.approx(0.5, abs=1e-6)


def test_selfpaced_weights_fall_with_loss_and_rise_with_lambda() -> None:
    losses = torch.linspace(0, 8, 9)
    early, late = selfpaced_weights(losses, 1.0), selfpaced_weights(losses, 6.0)
    assert torch.all(early[1:] < early[:-1])
    assert torch.all(late[1:] >= early[1:])


def test_selfpaced_weights_carry_no_gradient() -> None:
    losses = torch.tensor([0.5, 2.0], requires_grad=True)
    assert not selfpaced_weights(losses, 1.0).requires_grad


@pytest.mark.parametrize(("progress", "expected"), [(0.0, 1.0), (0.25, 5.5), (0.5, 10.0), (0.9, 10.0)])
def test_selfpaced_lambda_ramps_linearly_then_holds(progress: float, expected: float) -> None:
    assert selfpaced_lambda(progress, start=1.0, end=10.0, ramp=0.5) == pytest.approx(expected)


def test_selfpaced_lambda_without_ramp_is_the_end_value() -> None:
    assert selfpaced_lambda(0.0, 1.0, 10.0, 0.0) == 10.0


# ----------------------------------------------------------------------------- per-sample reductions


def test_per_sample_losses_average_to_the_batch_loss() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    zs, zt = torch.randn(6, 3), torch.randn(6, 3)
    pairs = [
        (class_drop_kd(zs, zt, 4.0, reduction="none"), class_drop_kd(zs, zt, 4.0)),
        (feature_loss(s, t, reduction="none"), feature_loss(s, t)),
        (relation_loss(s, t, 0.1, reduction="none"), relation_loss(s, t, 0.1)),
        (contrastive_relation_loss(s, t, zt, 0.1, reduction="none"), contrastive_relation_loss(s, t, zt, 0.1)),
    ]
    for per_sample, batch in pairs:
        assert per_sample.shape == (6,)
        assert float(per_sample.mean()) == pytest.approx(float(batch), rel=1e-6)


# ----------------------------------------------------------------------------- the loss mix


def _batch(n: int = 8, classes: int = 4, dim: int = 6) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(2)
    return torch.randn(n, classes), torch.randn(n, dim), torch.randn(n, dim), torch.randn(n, classes) * 3


def test_curriculum_total_is_the_v_weighted_mean_of_per_sample_losses() -> None:
    student_logits, embedding, teacher_embedding, teacher_logits = _batch()
    kd_only = ["loss.relation.enabled=false", "loss.feature.enabled=false", "loss.class_drop.enabled=false"]
    plain = load_recipe(None, kd_only)
    paced = load_recipe(None, [*kd_only, "train.curriculum.mode=selfpaced", "train.curriculum.lambda_start=0.5"])
    args = (student_logits, embedding, embedding, teacher_logits, teacher_embedding)
    mean_terms = distillation_loss(torch.nn.Module(), plain, *args)
    paced_terms = distillation_loss(torch.nn.Module(), paced, *args, progress=0.0)
    per_sample = class_drop_kd(student_logits, teacher_logits, 4.0, reduction="none")
    v = selfpaced_weights(per_sample / per_sample.mean(), 0.5)  # λ is in units of the batch's mean loss
    assert float(mean_terms.total) == pytest.approx(float(per_sample.mean()), rel=1e-6)
    assert float(paced_terms.total) == pytest.approx(float((v * per_sample).sum() / v.sum()), rel=1e-6)
    assert float(paced_terms.total) < float(mean_terms.total)  # hard samples count less early on
    late = distillation_loss(torch.nn.Module(), paced.model_copy(), *args, progress=1.0)
    assert paced_terms.parts["curriculum_weight"] < late.parts["curriculum_weight"]


def test_contrastive_relation_kind_is_used_and_needs_the_projector() -> None:
    student_logits, embedding, teacher_embedding, teacher_logits = _batch()
    recipe = load_recipe(None, ["loss.relation.kind=contrastive", "loss.feature.enabled=false"])
    assert uses_projector(recipe)
    assert not uses_projector(load_recipe(None, ["loss.relation.kind=kl", "loss.feature.enabled=false"]))
    terms = distillation_loss(
        torch.nn.Module(), recipe, student_logits, embedding, embedding, teacher_logits, teacher_embedding
    )
    expected = contrastive_relation_loss(embedding, teacher_embedding, teacher_logits, 0.1)
    assert terms.parts["relation"] == pytest.approx(float(expected), rel=1e-6)
