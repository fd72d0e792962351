"""Penultimate-embedding taps: the explicit and relational losses need f, not only the logits.

Students are nn.Modules we build, so a forward hook on the classifier's input suffices. Teachers may be
TorchScript or torch.export programs, where hooks are unavailable; for them the classifier is widened in
place to [W; I] with bias [b; 0], so one forward returns logits and embedding side by side. The widened
model is checked against the original logits before it is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ClassifierParams:
    weight_name: str
    bias_name: str | None
    embedding_dim: int


def find_classifier(module: nn.Module, num_classes: int) -> ClassifierParams | None:
    """The last 2-D parameter of shape [num_classes, D] (the final Linear), with its bias if any."""
    params = dict(module.named_parameters())
    found: ClassifierParams | None = None
    for name, tensor in params.items():
        if name.endswith("weight") and tensor.dim() == 2 and tensor.shape[0] == num_classes:
            bias_name = name[: -len("weight")] + "bias"
            bias = params.get(bias_name)
            has_bias = bias is not None and tuple(bias.shape) == (num_classes,)
            found = ClassifierParams(name, bias_name if has_bias else None, int(tensor.shape[1]))
    return found


def _owner(module: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    *path, leaf = param_name.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    return owner, leaf


class EmbeddingHook:
    """Captures the input of a student's classifier during forward (keeps the autograd graph)."""

    def __init__(self, model: nn.Module, classifier: ClassifierParams) -> None:
        owner, _ = _owner(model, classifier.weight_name)
        self.embedding: torch.Tensor | None = None
        self._handle = owner.register_forward_hook(self._capture)

    def _capture(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        self.embedding = inputs[0].flatten(1)

    def pop(self) -> torch.Tensor:
        if self.embedding is None:
            raise RuntimeError("no embedding captured: call the model first")
        embedding, self.embedding = self.embedding, None
        return embedding

    def remove(self) -> None:
        self._handle.remove()


@torch.no_grad()
def widen_classifier(module: nn.Module, num_classes: int, probe: torch.Tensor) -> int | None:
    """Widen the classifier in place so forward returns [logits | embedding]; return D, or None if unsafe.

    Works for nn.Module, TorchScript and torch.export modules alike because it only swaps parameter tensors.
    """
    classifier = find_classifier(module, num_classes)
    if classifier is None:
        return None
    reference = module(probe)
    owner, weight_leaf = _owner(module, classifier.weight_name)
    weight = getattr(owner, weight_leaf)
    dim = classifier.embedding_dim
    bias = None
    if classifier.bias_name is not None:
        bias_owner, bias_leaf = _owner(module, classifier.bias_name)
        bias = getattr(bias_owner, bias_leaf)
    eye = torch.eye(dim, dtype=weight.dtype, device=weight.device)
    try:
        setattr(owner, weight_leaf, nn.Parameter(torch.cat([weight, eye]), requires_grad=False))
        if bias is not None:
            zeros = torch.zeros(dim, dtype=bias.dtype, device=bias.device)
            setattr(bias_owner, bias_leaf, nn.Parameter(torch.cat([bias, zeros]), requires_grad=False))
        widened = module(probe)
        ok = (
            isinstance(widened, torch.Tensor)
            and widened.shape == (probe.shape[0], num_classes + dim)
            and torch.allclose(widened[:, :num_classes], reference, rtol=1e-4, atol=1e-4)
        )
    except Exception:  # any failure means the head is not a plain final Linear
        ok = False
    if not ok:
        setattr(owner, weight_leaf, weight)
        if bias is not None:
            setattr(bias_owner, bias_leaf, bias)
        return None
    return dim
