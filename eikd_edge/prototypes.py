"""Class prototypes in the teacher's embedding space: where the teacher puts each class, as seen on the pool.

Shared by prototype-scored selection, ODSD's closeness score and the novel-class report, so all three measure
"close to a class" the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_prototypes(probs: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """[C, D] unit vectors: the confidence-weighted mean of the normalised embeddings predicted as each class.

    A class no sample is predicted as gets a zero row (cosine 0 to everything), never a NaN.
    """
    normed = F.normalize(embeddings.float(), dim=1)
    predicted = probs.argmax(dim=1)
    confidence = probs.max(dim=1).values.float()
    prototypes = torch.zeros(probs.shape[1], normed.shape[1], dtype=normed.dtype)
    prototypes.index_add_(0, predicted, normed * confidence[:, None])
    return F.normalize(prototypes, dim=1)


def cosine_to_prototypes(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """[N, C] cosine of each embedding to each class prototype."""
    return F.normalize(embeddings.float(), dim=1) @ prototypes.T


def own_prototype_cosine(probs: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """[N] cosine of each sample to the prototype of the class the teacher predicts for it."""
    prototypes = class_prototypes(probs, embeddings)
    cosines = cosine_to_prototypes(embeddings, prototypes)
    return cosines.gather(1, probs.argmax(dim=1, keepdim=True)).squeeze(1)
