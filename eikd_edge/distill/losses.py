"""The distillation losses: EIKD's (class-dropping KD, explicit features, implicit relations), DFND's noise
adaptation, ODSD's denoised contrastive relation, and CuDFKD's self-paced sample weights.

Each function is pure (tensors in, tensor out) so the mathematics can be tested on hand-computed values. Losses
return one value per sample (`reduction="none"`) so a curriculum can weight samples before the batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kept_class_mask(
    teacher_logits: torch.Tensor,
    top_k: int | None = None,
    mass: float = 1.0,
    temperature: float = 1.0,
    min_classes: int = 1,
) -> torch.Tensor:
    """Per sample, the classes carrying the teacher's top probability: top-k, or the smallest set reaching `mass`.

    The mass is measured on the distribution the loss uses (softmax(z / temperature)), never on a sharper one:
    at τ = 1 a confident teacher reaches any mass with its top class alone, which would turn KD into
    cross-entropy on a hard pseudo-label. At least `min_classes` classes are kept, so the class the teacher ranks
    next (its dark knowledge) always survives.
    """
    probs = (teacher_logits.float() / temperature).softmax(dim=1)
    if top_k is not None or mass >= 1.0:
        k = min(top_k, probs.shape[1]) if top_k is not None else probs.shape[1]
        mask = torch.zeros_like(probs, dtype=torch.bool)
        return mask.scatter_(1, probs.topk(k, dim=1).indices, True)
    sorted_probs, order = probs.sort(dim=1, descending=True)
    mass_before = sorted_probs.cumsum(dim=1) - sorted_probs
    keep_sorted = mass_before < mass  # keep until the running mass reaches the target (the crossing class too)
    keep_sorted[:, : min(min_classes, probs.shape[1])] = True
    return torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)


def class_drop_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
    mask_student: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """τ² · KL(p̃_T ‖ p̃_S) over the kept classes; dropped classes are masked out of the teacher's softmax and,
    with `mask_student`, out of the student's too (else the student's full softmax is matched to p̃_T, which
    still pushes its dropped classes down when the teacher keeps a single class).

    With no mask this is Hinton et al.'s KD loss.
    """
    t = temperature
    s = student_logits.float() / t
    z = teacher_logits.float() / t
    if mask is not None:
        if mask_student:
            s = s.masked_fill(~mask, float("-inf"))
        z = z.masked_fill(~mask, float("-inf"))
    log_p_s = F.log_softmax(s, dim=1)
    log_p_t = F.log_softmax(z, dim=1)
    p_t = log_p_t.exp()
    terms = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), torch.zeros_like(p_t))
    return _reduce((t * t) * terms.sum(dim=1), reduction)


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def feature_loss(
    projected_student: torch.Tensor, teacher_embedding: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """‖norm(g(f_S)) − norm(f_T)‖², averaged over the batch (0 for aligned, 4 for opposite directions)."""
    diff = F.normalize(projected_student.float(), dim=1) - F.normalize(teacher_embedding.float(), dim=1)
    return _reduce(diff.pow(2).sum(dim=1), reduction)


def relation_matrix_log(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise log-softmax of pairwise cosine similarities / τ_r with the diagonal masked out."""
    normed = F.normalize(embeddings.float(), dim=1)
    similarity = normed @ normed.T / temperature
    eye = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    return F.log_softmax(similarity.masked_fill(eye, float("-inf")), dim=1)


def relation_loss(
    student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, temperature: float, reduction: str = "mean"
) -> torch.Tensor:
    """KL(A_T ‖ A_S) averaged over rows: the student keeps the teacher's similarity structure within a batch."""
    if student_embedding.shape[0] < 3:
        return _reduce(student_embedding.float().sum(dim=1) * 0.0, reduction)
    log_a_s = relation_matrix_log(student_embedding, temperature)
    log_a_t = relation_matrix_log(teacher_embedding, temperature)
    a_t = log_a_t.exp()
    off_diagonal = ~torch.eye(a_t.shape[0], dtype=torch.bool, device=a_t.device)
    terms = torch.where(off_diagonal, a_t * (log_a_t - log_a_s), torch.zeros_like(a_t))
    return _reduce(terms.sum(dim=1), reduction)


def contrastive_relation_loss(
    projected_student: torch.Tensor,
    teacher_embedding: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """ODSD's denoised contrastive relation: each student sample must pick out its own teacher embedding
    among the batch's, L_i = −log(e^(s_i·t_i/τ) / Σ_j w_ij e^(s_i·t_j/τ)), with w_ii = 1 and, for j ≠ i,
    w_ij = 1 − Σ_c p_ic p_jc, the teacher's probability that i and j belong to different classes.

    A pair the teacher places in one class is not pushed apart (it is likely a false negative), and a pair whose
    relation the teacher is unsure of counts only in part: unreliable relations are down-weighted.
    """
    s = F.normalize(projected_student.float(), dim=1)
    t = F.normalize(teacher_embedding.float(), dim=1)
    probs = teacher_logits.float().softmax(dim=1)
    weights = (1.0 - probs @ probs.T).clamp_min(0.0)
    weights.fill_diagonal_(1.0)
    scores = s @ t.T / temperature
    log_denominator = torch.logsumexp(scores + weights.clamp_min(1e-12).log(), dim=1)
    return _reduce(log_denominator - scores.diagonal(), reduction)


def selfpaced_weights(losses: torch.Tensor, lam: float) -> torch.Tensor:
    """CuDFKD's self-paced weights v = (1 + e^(−λ)) / (1 + e^(ℓ − λ)): 1 at ℓ = 0, ½(1 + e^(−λ)) at ℓ = λ, → 0
    for ℓ ≫ λ. Samples the student already fits count fully; as λ grows, harder ones are let in."""
    losses = losses.detach().float()
    return (1.0 + torch.exp(torch.tensor(-lam))) * torch.sigmoid(lam - losses)


def selfpaced_lambda(progress: float, start: float, end: float, ramp: float) -> float:
    """λ rises linearly from `start` to `end` over the first `ramp` fraction of training, then stays."""
    if ramp <= 0:
        return end
    return start + (end - start) * min(1.0, max(0.0, progress) / ramp)


class NoiseAdaptation(nn.Module):
    """DFND's learned label-noise transition Q (rows softmax-normalised, initialised near the identity)."""

    def __init__(self, num_classes: int, init_diagonal: float = 0.9) -> None:
        super().__init__()
        off = (1.0 - init_diagonal) / max(num_classes - 1, 1)
        init = torch.full((num_classes, num_classes), off).fill_diagonal_(init_diagonal)
        self.logits = nn.Parameter(init.log())

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """NLL of the teacher's hard label under the student's prediction passed through Q."""
        transition = self.logits.softmax(dim=1)
        adapted = student_logits.float().softmax(dim=1) @ transition
        return F.nll_loss(adapted.clamp_min(1e-8).log(), teacher_logits.argmax(dim=1), reduction=reduction)
