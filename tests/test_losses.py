"""The EIKD losses against hand-computed values (DESIGN §3.2-3.4) and DFND's noise adaptation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from eikd_edge.distill.losses import (
    NoiseAdaptation,
    class_drop_kd,
    feature_loss,
    kept_class_mask,
    relation_loss,
    relation_matrix_log,
)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def _softmax(z: list[float]) -> list[float]:
    peak = max(z)
    e = [math.exp(v - peak) for v in z]
    return [v / sum(e) for v in e]


# ----------------------------------------------------------------------------- class_drop_kd


def test_class_drop_kd_is_zero_for_identical_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0], [-5.0, 5.0, 1.0, 2.0]])
    assert float(class_drop_kd(logits, logits.clone(), temperature=4.0)) == pytest.approx(0.0, abs=1e-7)
    mask = kept_class_mask(logits, top_k=2)
    assert float(class_drop_kd(logits, logits.clone(), temperature=2.0, mask=mask)) == pytest.approx(0.0, abs=1e-7)


def test_class_drop_kd_two_class_hand_value() -> None:
    # τ = 2, teacher logits (2·ln3, 0) → softened teacher p_T = (3/4, 1/4); student logits (0, 0) → p_S = (1/2, 1/2).
    # KL(p_T ‖ p_S) = 0.75·ln(0.75/0.5) + 0.25·ln(0.25/0.5) = 0.75·0.4054651 − 0.25·0.6931472 = 0.1308120
    # loss = τ² · KL = 4 · 0.1308120 = 0.5232481
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    student = torch.tensor([[0.0, 0.0]])
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert expected == pytest.approx(0.5232481, abs=1e-6)
    assert float(class_drop_kd(student, teacher, temperature=2.0)) == pytest.approx(expected, rel=1e-5)


def test_class_drop_kd_is_the_batch_mean_of_per_sample_kl() -> None:
    teacher = torch.tensor([[2 * math.log(3.0), 0.0], [0.0, 0.0]])
    student = torch.tensor([[0.0, 0.0], [2 * math.log(4.0), 0.0]])  # τ=2, row 1: p_S = (0.8, 0.2), p_T = (0.5, 0.5)
    row0 = _kl([0.75, 0.25], [0.5, 0.5])  # 0.1308120
    row1 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)  # 0.2231436
    expected = 4 * (row0 + row1) / 2
    assert float(class_drop_kd(student, teacher, temperature=2.0)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_class_drop_kd_scales_with_tau_squared(tau: float) -> None:
    # Logits τ·a and τ·b give the same softened distributions softmax(a), softmax(b) at every τ,
    # so the loss must be exactly τ²·KL(softmax(a) ‖ softmax(b)).
    a = [1.0, -0.5, 0.25]
    b = [-0.3, 0.8, 0.1]
    kl = _kl(_softmax(a), _softmax(b))
    teacher = torch.tensor([a]) * tau
    student = torch.tensor([b]) * tau
    value = float(class_drop_kd(student, teacher, temperature=tau))
    assert value == pytest.approx(tau * tau * kl, rel=1e-5)
    assert value == pytest.approx(tau * tau * float(class_drop_kd(torch.tensor([b]), torch.tensor([a]), 1.0)), rel=1e-5)


def test_class_drop_kd_masked_hand_value_renormalises_over_kept_classes() -> None:
    teacher = torch.tensor([[3.0, 2.0, -1.0, -2.0]])
    student = torch.tensor([[0.5, 1.5, 4.0, 0.0]])
    mask = torch.tensor([[True, True, False, False]])
    t = 2.0
    p_t = _softmax([3.0 / t, 2.0 / t])  # teacher renormalised over the kept classes
    p_s = _softmax([0.5 / t, 1.5 / t])  # student softmax over the same kept classes
    expected = t * t * _kl(p_t, p_s)
    assert float(class_drop_kd(student, teacher, temperature=t, mask=mask)) == pytest.approx(expected, rel=1e-5)


def test_dropped_classes_get_exactly_zero_gradient_and_do_not_change_the_loss() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(5, 6) * 3
    mask = kept_class_mask(teacher, top_k=3)
    student = torch.randn(5, 6, requires_grad=True)
    loss = class_drop_kd(student, teacher, temperature=4.0, mask=mask)
    (grad,) = torch.autograd.grad(loss, student)
    value = float(loss.detach())
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))
    assert (grad[mask].abs() > 0).any()

    shifted = student.detach().clone()
    shifted[~mask] += torch.randn(int((~mask).sum())) * 100  # wild changes to the dropped student logits
    assert float(class_drop_kd(shifted, teacher, 4.0, mask)) == pytest.approx(value, abs=1e-7)
    teacher_shifted = teacher.clone()
    teacher_shifted[~mask] -= 50.0  # the teacher's dropped classes do not matter either
    assert float(class_drop_kd(student.detach(), teacher_shifted, 4.0, mask)) == pytest.approx(value, abs=1e-7)


def test_full_mask_equals_no_mask() -> None:
    torch.manual_seed(1)
    teacher, student = torch.randn(4, 5), torch.randn(4, 5)
    full = torch.ones(4, 5, dtype=torch.bool)
    assert float(class_drop_kd(student, teacher, 3.0, full)) == pytest.approx(
        float(class_drop_kd(student, teacher, 3.0))
    )


# ----------------------------------------------------------------------------- kept_class_mask


def _logits_for(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


@pytest.mark.parametrize(
    ("mass", "expected"),
    [
        (0.5, [True, False, False]),
        (0.8, [True, True, False]),  # 0.6 < 0.8 → the crossing class (0.3) is kept too
        (0.95, [True, True, True]),
        (1.0, [True, True, True]),
    ],
)
def test_kept_class_mask_by_mass(mass: float, expected: list[bool]) -> None:
    mask = kept_class_mask(_logits_for([[0.6, 0.3, 0.1]]), mass=mass)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [expected]


def test_kept_class_mask_by_mass_follows_probability_order_per_row() -> None:
    logits = _logits_for([[0.1, 0.6, 0.3], [0.3, 0.1, 0.6], [0.05, 0.05, 0.9]])
    assert kept_class_mask(logits, mass=0.8).tolist() == [
        [False, True, True],
        [True, False, True],
        [False, False, True],
    ]


@pytest.mark.parametrize(
    ("top_k", "expected"),
    [
        (1, [[False, True, False, False], [False, False, False, True]]),
        (2, [[True, True, False, False], [False, False, True, True]]),
        (10, [[True] * 4, [True] * 4]),  # more than C keeps everything
    ],
)
def test_kept_class_mask_top_k(top_k: int, expected: list[list[bool]]) -> None:
    logits = _logits_for([[0.3, 0.5, 0.15, 0.05], [0.1, 0.15, 0.25, 0.5]])
    # top_k overrides mass
    assert kept_class_mask(logits, top_k=top_k, mass=0.1).tolist() == expected


# ----------------------------------------------------------------------------- feature_loss


def test_feature_loss_hand_values() -> None:
    parallel = feature_loss(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.3, 0.4]]))
    opposite = feature_loss(torch.tensor([[1.0, 2.0, -2.0]]), torch.tensor([[-2.0, -4.0, 4.0]]))
    orthogonal = feature_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert float(parallel) == pytest.approx(0.0, abs=1e-6)
    assert float(opposite) == pytest.approx(4.0, abs=1e-6)
    assert float(orthogonal) == pytest.approx(2.0, abs=1e-6)
    batch = feature_loss(torch.tensor([[5.0, 0.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0], [-1.0, 0.0]]))
    assert float(batch) == pytest.approx((0.0 + 4.0) / 2, abs=1e-6)


# ----------------------------------------------------------------------------- relations


def _orthogonal(dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q.float()


def test_relation_loss_zero_for_scaled_or_rotated_copies() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(6, 8)
    assert float(relation_loss(teacher * 3.7, teacher, 0.1)) == pytest.approx(0.0, abs=1e-5)
    row_scales = torch.tensor([[0.5], [2.0], [7.0], [1.0], [0.1], [3.0]])
    assert float(relation_loss(teacher * row_scales, teacher, 0.1)) == pytest.approx(0.0, abs=1e-5)
    # the student's embedding space may differ from the teacher's: only the similarity structure matters
    assert float(relation_loss(teacher @ _orthogonal(8, 1), teacher, 0.5)) == pytest.approx(0.0, abs=1e-5)


def test_relation_loss_positive_for_different_structure() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(6, 8)
    student = torch.randn(6, 8)
    assert float(relation_loss(student, teacher, 0.1)) > 1e-3
    assert float(relation_loss(-teacher, teacher, 0.5)) == pytest.approx(0.0, abs=1e-5)  # cos(-a,-b) = cos(a,b)
    swapped = teacher.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert float(relation_loss(swapped, teacher, 0.1)) > 1e-3


def test_relation_loss_invariant_to_common_rotation() -> None:
    torch.manual_seed(2)
    teacher, student = torch.randn(7, 5), torch.randn(7, 5)
    rotation = _orthogonal(5, 3)
    before = float(relation_loss(student, teacher, 0.2))
    after = float(relation_loss(student @ rotation, teacher @ rotation, 0.2))
    assert before > 1e-3
    assert after == pytest.approx(before, rel=1e-4)


def test_relation_loss_gradient_is_finite_despite_masked_diagonal() -> None:
    torch.manual_seed(4)
    student = torch.randn(6, 5, requires_grad=True)
    loss = relation_loss(student, torch.randn(6, 7), 0.1)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_relation_loss_is_zero_below_three_samples() -> None:
    student = torch.randn(2, 4, requires_grad=True)
    loss = relation_loss(student, torch.randn(2, 4), 0.1)
    assert float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph


def test_relation_matrix_log_rows_are_distributions_with_zero_diagonal() -> None:
    torch.manual_seed(0)
    log_a = relation_matrix_log(torch.randn(5, 3), 0.1)
    a = log_a.exp()
    assert a.shape == (5, 5)
    assert torch.allclose(a.sum(dim=1), torch.ones(5), atol=1e-5)
    assert torch.equal(torch.diagonal(a), torch.zeros(5))


def test_relation_matrix_log_hand_value() -> None:
    # e1, e1, e2 at τ=1: row 0 sees cos 1 (to sample 1) and cos 0 (to sample 2) → (e/(e+1), 1/(e+1))
    a = relation_matrix_log(torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]]), 1.0).exp()
    e = math.e
    assert a[0].tolist() == pytest.approx([0.0, e / (e + 1), 1 / (e + 1)], abs=1e-6)
    assert a[2].tolist() == pytest.approx([0.5, 0.5, 0.0], abs=1e-6)


# ----------------------------------------------------------------------------- NoiseAdaptation


def test_noise_adaptation_initial_transition() -> None:
    module = NoiseAdaptation(5)
    q = module.logits.softmax(dim=1).detach()
    assert torch.allclose(torch.diagonal(q), torch.full((5,), 0.9), atol=1e-6)
    off = q[~torch.eye(5, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, 0.1 / 4), atol=1e-6)
    assert torch.allclose(q.sum(dim=1), torch.ones(5), atol=1e-6)


def test_noise_adaptation_loss_hand_value() -> None:
    module = NoiseAdaptation(3)
    student = torch.tensor([[0.0, 0.0, 0.0]])  # p_S uniform → p_S @ Q uniform (Q is doubly stochastic here)
    teacher = torch.tensor([[0.0, 5.0, 1.0]])  # hard label 1
    assert float(module(student, teacher).detach()) == pytest.approx(math.log(3.0), rel=1e-5)
    student = torch.tensor([[math.log(8.0), 0.0, math.log(1.0)]])  # p_S = (0.8, 0.1, 0.1)
    adapted_1 = 0.8 * 0.05 + 0.1 * 0.9 + 0.1 * 0.05
    assert float(module(student, teacher).detach()) == pytest.approx(-math.log(adapted_1), rel=1e-5)


def test_noise_adaptation_loss_decreases_with_sgd() -> None:
    torch.manual_seed(0)
    module = NoiseAdaptation(4)
    student = torch.randn(16, 4, requires_grad=True)
    teacher = torch.randn(16, 4)
    optimizer = torch.optim.SGD([student, *module.parameters()], lr=0.5)
    losses = []
    for _ in range(10):
        loss = module(student, teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(losses))


def test_class_drop_full_student_softmax_still_pushes_dropped_classes_down() -> None:
    """With one kept class the masked loss is 0 (no signal); the full-softmax variant is not, and its gradient on
    the dropped class is positive (descending it lowers that logit)."""
    teacher = torch.tensor([[5.0, 0.0, 0.0]])
    mask = kept_class_mask(teacher, mass=0.9)
    assert mask.tolist() == [[True, False, False]]
    student = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    assert float(class_drop_kd(student, teacher, 4.0, mask)) == pytest.approx(0.0, abs=1e-7)
    loss = class_drop_kd(student, teacher, 4.0, mask, mask_student=False)
    (grad,) = torch.autograd.grad(loss, student)
    expected = 16.0 * -torch.log_softmax(student.detach() / 4.0, dim=1)[0, 0]
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert grad[0, 1] > 0 and grad[0, 0] < 0
