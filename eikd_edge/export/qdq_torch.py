"""Run an ONNX Runtime Q/DQ model as a differentiable torch module whose weights are the FP32 model's, quantized on
the fly (straight-through), so a fine-tune sees exactly the quantization points, scales and zero points that ONNX
Runtime's quantizer chose, and not an approximation rebuilt from the PyTorch module.

Activation QuantizeLinear -> DequantizeLinear pairs become fake-quant with the calibrated scale and zero point.
A weight stored as an integer initializer behind DequantizeLinear becomes a trainable FP32 parameter (the FP32
model's initializer of the same name) fake-quantized with a scale that follows it (max |w| per channel, in the
same ratio as the calibrated scale), so the weight can move and still land on the grid ONNX Runtime will use.
An int32 bias is used in FP32 (its rounding error is below one activation step). Operators outside OPS raise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from eikd_edge.errors import EikdError

QUANTIZED_SUFFIX = "_quantized"  # ORT's name for the integer copy of an initializer
_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class QDQModule(nn.Module):
    """`qdq` is the quantized model, `fp32` the model it was quantized from. (ORT drops a Relu that feeds a u8
    QuantizeLinear, so the Q/DQ graph without its fake-quant is not the FP32 function: run `QDQModule(fp32, fp32)`
    for that.)"""

    def __init__(self, qdq: onnx.ModelProto, fp32: onnx.ModelProto) -> None:
        super().__init__()
        fp32_init = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
        self.nodes = list(qdq.graph.node)
        self.inputs = [i.name for i in qdq.graph.input if i.name not in fp32_init]
        self.outputs = [o.name for o in qdq.graph.output]
        unknown = sorted({n.op_type for n in self.nodes} - set(OPS) - {"QuantizeLinear", "DequantizeLinear"})
        if unknown:
            raise EikdError(f"quantization-aware distillation does not support ONNX operator(s) {', '.join(unknown)}")
        self.params = nn.ParameterDict()
        self.names: dict[str, str] = {}  # initializer name in the Q/DQ model -> key in params
        self.constants: dict[str, torch.Tensor] = {}
        self.weight_ratio: dict[str, torch.Tensor] = {}  # calibrated scale / (max|w| per channel)
        trainable = self._trainable_names(fp32_init)
        for tensor in qdq.graph.initializer:
            array = numpy_helper.to_array(tensor)
            source = tensor.name[: -len(QUANTIZED_SUFFIX)] if tensor.name.endswith(QUANTIZED_SUFFIX) else tensor.name
            if source in trainable and source in fp32_init:
                key = f"p{len(self.params)}"
                self.params[key] = nn.Parameter(torch.from_numpy(fp32_init[source].astype(np.float32).copy()))
                self.names[tensor.name] = key
                self.names.setdefault(source, key)
            else:
                self.constants[tensor.name] = torch.from_numpy(np.array(array))

    def _trainable_names(self, fp32_init: dict[str, np.ndarray]) -> set[str]:
        """FP32 initializers that are weights or biases: behind a DequantizeLinear, or the B/C input of a Conv,
        Gemm or MatMul left in FP32 (the classifier head)."""
        names: set[str] = set()
        for node in self.nodes:
            if node.op_type == "DequantizeLinear" and node.input[0].endswith(QUANTIZED_SUFFIX):
                names.add(node.input[0][: -len(QUANTIZED_SUFFIX)])
            elif node.op_type in ("Conv", "Gemm", "MatMul", "QuantizeLinear"):
                names.update(name for name in node.input[1:3] if name in fp32_init and node.op_type != "QuantizeLinear")
                if node.op_type == "QuantizeLinear" and node.input[0] in fp32_init:
                    names.add(node.input[0])  # TensorRT layout: FP32 weight behind a Q -> DQ pair
        return {n for n in names if fp32_init.get(n) is not None and fp32_init[n].dtype.kind == "f"}

    def fp32_weights(self) -> dict[str, np.ndarray]:
        """The trained weights under their FP32 initializer names."""
        out = {}
        for name, key in self.names.items():
            if not name.endswith(QUANTIZED_SUFFIX):
                out[name] = self.params[key].detach().numpy().copy()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, Any] = {self.inputs[0]: x}
        for node in self.nodes:
            args = [self._value(name, values) if name else None for name in node.input]
            if node.op_type == "QuantizeLinear":
                result = self._quantize(node, args)
            elif node.op_type == "DequantizeLinear":
                result = self._dequantize(node, args)
            else:
                result = OPS[node.op_type](args, _attrs(node))
            results = result if isinstance(result, tuple) else (result,)
            for name, value in zip(node.output, results, strict=False):
                values[name] = value
        return values[self.outputs[0]]

    def _value(self, name: str, values: dict[str, Any]) -> Any:
        if name in values:
            return values[name]
        if name in self.names:
            return _Weight(self.params[self.names[name]], name.endswith(QUANTIZED_SUFFIX))
        return self.constants[name]

    def _quantize(self, node: onnx.NodeProto, args: list[Any]) -> Any:
        x, scale, zero = args[0], args[1], args[2]
        if isinstance(x, _Weight):
            x = x.tensor
        qmin, qmax = _RANGES[np.dtype(zero.numpy().dtype)] if zero is not None else (0, 255)
        axis = int(_attrs(node).get("axis", 1))
        return _fake(x, scale, zero, axis, qmin, qmax)

    def _dequantize(self, node: onnx.NodeProto, args: list[Any]) -> Any:
        x, scale, zero = args[0], args[1], args[2] if len(args) > 2 else None
        if not isinstance(x, _Weight):
            return x  # the output of an activation QuantizeLinear, already fake-quantized
        weight = x.tensor
        if not x.integer or weight.dim() < 2:
            return weight  # int32 bias, or a Q -> DQ pair already applied
        axis = int(_attrs(node).get("axis", 1))
        key = node.input[0]
        if key not in self.weight_ratio:
            self.weight_ratio[key] = scale.float() / _absmax(weight.detach(), axis, scale.numel()).clamp_min(1e-12)
        live = (_absmax(weight.detach(), axis, scale.numel()) * self.weight_ratio[key]).clamp_min(1e-12)
        qmin, qmax = _RANGES[np.dtype(zero.numpy().dtype)] if zero is not None else (-128, 127)
        return _fake(weight, live, zero if zero is not None else torch.zeros_like(scale), axis, qmin, qmax)


class _Weight:
    """An initializer on its way into a DequantizeLinear: the FP32 parameter and whether ORT stored it as an
    integer (quantized) tensor."""

    def __init__(self, tensor: torch.Tensor, integer: bool) -> None:
        self.tensor, self.integer = tensor, integer


def _absmax(weight: torch.Tensor, axis: int, channels: int) -> torch.Tensor:
    if channels == 1:
        return weight.abs().max().reshape(1)
    return weight.abs().transpose(0, axis).reshape(weight.shape[axis], -1).max(dim=1).values


def _fake(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (torch's fake_quantize ops)."""
    scale = scale.float().reshape(-1)
    zero = zero.reshape(-1).to(torch.int32)
    if scale.numel() == 1:
        return torch.fake_quantize_per_tensor_affine(x, float(scale[0]), int(zero[0]), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zero, axis % x.dim(), qmin, qmax)


def _t(value: Any) -> torch.Tensor:
    return value.tensor if isinstance(value, _Weight) else value


def _ints(value: Any) -> list[int]:
    return [int(v) for v in _t(value).reshape(-1).tolist()]


def _conv(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, w = _t(args[0]), _t(args[1])
    bias = _t(args[2]) if len(args) > 2 and args[2] is not None else None
    if w.dim() != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise EikdError("quantization-aware distillation supports 2-D convolutions with explicit padding only")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        x, pads = F.pad(x, (pads[1], pads[3], pads[0], pads[2])), [0, 0, 0, 0]
    return F.conv2d(
        x, w, bias, tuple(attrs.get("strides", (1, 1))), tuple(pads[:2]), tuple(attrs.get("dilations", (1, 1))),
        int(attrs.get("group", 1)),
    )  # fmt: skip


def _gemm(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    a, b = _t(args[0]), _t(args[1])
    a = a.transpose(0, 1) if attrs.get("transA", 0) else a
    b = b.transpose(0, 1) if attrs.get("transB", 0) else b
    out = float(attrs.get("alpha", 1.0)) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        out = out + float(attrs.get("beta", 1.0)) * _t(args[2])
    return out


def _pool(args: list[Any], attrs: dict[str, Any], kind: str) -> torch.Tensor:
    x = _t(args[0])
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    kernel, strides = tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", (1, 1)))
    ceil = bool(attrs.get("ceil_mode", 0))
    if pads[:2] != pads[2:]:
        raise EikdError("quantization-aware distillation supports symmetric pooling pads only")
    if kind == "max":
        return F.max_pool2d(x, kernel, strides, tuple(pads[:2]), tuple(attrs.get("dilations", (1, 1))), ceil)
    return F.avg_pool2d(x, kernel, strides, tuple(pads[:2]), ceil, bool(attrs.get("count_include_pad", 0)))


def _reshape(args: list[Any], _attrs: dict[str, Any]) -> torch.Tensor:
    x, shape = _t(args[0]), _ints(args[1])
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _axes(args: list[Any], attrs: dict[str, Any]) -> list[int]:
    if "axes" in attrs:
        return list(attrs["axes"])
    return _ints(args[1]) if len(args) > 1 and args[1] is not None else []


def _unsqueeze(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x = _t(args[0])
    for axis in sorted(a % (x.dim() + len(_axes(args, attrs))) for a in _axes(args, attrs)):
        x = x.unsqueeze(axis)
    return x


def _clip(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    low = _t(args[1]) if len(args) > 1 and args[1] is not None else attrs.get("min")
    high = _t(args[2]) if len(args) > 2 and args[2] is not None else attrs.get("max")
    return torch.clamp(_t(args[0]), None if low is None else float(low), None if high is None else float(high))


def _reduce_mean(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    axes = _axes(args, attrs) or list(range(_t(args[0]).dim()))
    return _t(args[0]).mean(dim=axes, keepdim=bool(attrs.get("keepdims", 1)))


OPS: dict[str, Callable[[list[Any], dict[str, Any]], Any]] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda a, _: _t(a[0]) @ _t(a[1]),
    "Relu": lambda a, _: F.relu(_t(a[0])),
    "Clip": _clip,
    "LeakyRelu": lambda a, k: F.leaky_relu(_t(a[0]), float(k.get("alpha", 0.01))),
    "Sigmoid": lambda a, _: torch.sigmoid(_t(a[0])),
    "HardSigmoid": lambda a, k: torch.clamp(float(k.get("alpha", 0.2)) * _t(a[0]) + float(k.get("beta", 0.5)), 0, 1),
    "HardSwish": lambda a, _: F.hardswish(_t(a[0])),
    "Tanh": lambda a, _: torch.tanh(_t(a[0])),
    "Erf": lambda a, _: torch.erf(_t(a[0])),
    "Sqrt": lambda a, _: torch.sqrt(_t(a[0])),
    "Add": lambda a, _: _t(a[0]) + _t(a[1]),
    "Sub": lambda a, _: _t(a[0]) - _t(a[1]),
    "Mul": lambda a, _: _t(a[0]) * _t(a[1]),
    "Div": lambda a, _: _t(a[0]) / _t(a[1]),
    "Pow": lambda a, _: torch.pow(_t(a[0]), _t(a[1])),
    "GlobalAveragePool": lambda a, _: _t(a[0]).mean(dim=(2, 3), keepdim=True),
    "AveragePool": lambda a, k: _pool(a, k, "avg"),
    "MaxPool": lambda a, k: _pool(a, k, "max"),
    "Flatten": lambda a, k: _t(a[0]).flatten(int(k.get("axis", 1)) % max(_t(a[0]).dim(), 1)),
    "Reshape": _reshape,
    "Transpose": lambda a, k: _t(a[0]).permute(*k.get("perm", range(_t(a[0]).dim() - 1, -1, -1))),
    "Concat": lambda a, k: torch.cat([_t(v) for v in a], dim=int(k["axis"])),
    "ReduceMean": _reduce_mean,
    "Softmax": lambda a, k: torch.softmax(_t(a[0]), dim=int(k.get("axis", -1))),
    "Identity": lambda a, _: _t(a[0]),
    "Squeeze": lambda a, k: _t(a[0]).squeeze(tuple(_axes(a, k))) if _axes(a, k) else _t(a[0]).squeeze(),
    "Unsqueeze": _unsqueeze,
    "Shape": lambda a, _: torch.tensor(list(_t(a[0]).shape), dtype=torch.int64),
    "Gather": lambda a, k: torch.index_select(_t(a[0]), int(k.get("axis", 0)), _t(a[1]).reshape(-1)).reshape(
        *_t(a[0]).shape[: int(k.get("axis", 0))], *_t(a[1]).shape, *_t(a[0]).shape[int(k.get("axis", 0)) + 1 :]
    ),
    "Constant": lambda _, k: torch.from_numpy(np.array(numpy_helper.to_array(k["value"]))),
}
