"""What a teacher's BatchNorm layers remember of its training data, and how far new inputs are from it.

Every BatchNorm layer stores the running mean and variance of its input over the teacher's training set. ODSD
uses the distance of a field image's activations to them as "closeness to the original distribution"; data-free
synthesis (DeepInversion-style prior) pulls synthetic batches towards them. Only eager modules expose their
layers: a TorchScript or .pt2 teacher gets them when its architecture is named (`--teacher-arch`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers with running statistics (empty for TorchScript/.pt2 modules, whose layers are opaque)."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]


class BatchNormTaps:
    """Forward hooks capturing every BatchNorm layer's input, per forward call (the autograd graph is kept)."""

    def __init__(self, module: nn.Module) -> None:
        self.layers = batchnorm_layers(module)
        self.captured: list[tuple[torch.Tensor, _BatchNorm]] = []
        self._handles = [layer.register_forward_hook(self._capture) for layer in self.layers]

    def _capture(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        assert isinstance(layer, _BatchNorm)
        self.captured.append((inputs[0], layer))

    def __bool__(self) -> bool:
        return bool(self.layers)

    def pop(self) -> list[tuple[torch.Tensor, _BatchNorm]]:
        """(input, layer) pairs captured since the last pop, in call order."""
        captured, self.captured = self.captured, []
        return captured

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class BatchNormDeviation:
    """Forward hooks that reduce each BatchNorm layer's input to one number per image as the layer runs (the
    z-score² of `per_sample_deviation`), so no activation outlives its layer: holding every layer's input until
    the batch ends, and computing variances nobody reads, cost the scoring pass about 40% of its speed."""

    def __init__(self, module: nn.Module) -> None:
        self.layers = batchnorm_layers(module)
        self._per_layer: list[torch.Tensor] = []
        self._handles = [layer.register_forward_hook(self._reduce) for layer in self.layers]

    def _reduce(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        assert isinstance(layer, _BatchNorm)
        with torch.no_grad():
            self._per_layer.append(_layer_deviation(inputs[0], layer))

    def __bool__(self) -> bool:
        return bool(self.layers)

    def pop(self) -> torch.Tensor:
        """[N] deviation of the images of the forward calls since the last pop (mean over layers)."""
        per_layer, self._per_layer = self._per_layer, []
        return torch.stack(per_layer).mean(dim=0)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _layer_deviation(x: torch.Tensor, layer: _BatchNorm) -> torch.Tensor:
    """[N] mean over channels of (μ_nc − μ̂_c)² / σ̂²_c for one layer's input."""
    x = x.float()
    mean = x if x.dim() == 2 else x.flatten(2).mean(dim=2)
    running_mean = layer.running_mean.float()  # type: ignore[union-attr]
    running_var = layer.running_var.float()  # type: ignore[union-attr]
    return ((mean - running_mean) ** 2 / (running_var + layer.eps)).mean(dim=1)


def per_sample_deviation(captured: list[tuple[torch.Tensor, _BatchNorm]]) -> torch.Tensor:
    """[N] mean over layers and channels of ((μ_nc − μ̂_c)² / σ̂²_c): a z-score² of each image's channel means
    against the teacher's training statistics. Lower = closer to what the teacher was trained on."""
    return torch.stack([_layer_deviation(x, layer) for x, layer in captured]).mean(dim=0)


def batch_statistics_loss(captured: list[tuple[torch.Tensor, _BatchNorm]]) -> torch.Tensor:
    """Σ_l ‖μ_l(B) − μ̂_l‖₂ + ‖σ²_l(B) − σ̂²_l‖₂ over a batch B: the DeepInversion prior for synthetic images."""
    total = torch.zeros(())
    for x, layer in captured:
        dims = [0] if x.dim() == 2 else [0, *range(2, x.dim())]
        mean = x.float().mean(dim=dims)
        var = x.float().var(dim=dims, unbiased=False)
        total = total.to(mean.device)
        total = total + torch.linalg.vector_norm(mean - layer.running_mean.float())  # type: ignore[union-attr]
        total = total + torch.linalg.vector_norm(var - layer.running_var.float())  # type: ignore[union-attr]
    return total
