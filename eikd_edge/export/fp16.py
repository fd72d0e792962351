"""An FP16 copy of the FP32 ONNX for strongly typed TensorRT (11.x), where precision comes from the model's types.

A small cast pass instead of a converter package: float initializers and float Constant tensors become float16,
Cast-to-float becomes Cast-to-float16, and the model keeps float32 input and output (one Cast at each end) so the
caller feeds and reads the same tensors as for the FP32 model. Its parity is measured with ONNX Runtime on the CPU
before it goes to the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from eikd_edge.atomic import write_atomic
from eikd_edge.errors import EikdError

_FP16_MAX = float(np.finfo(np.float16).max)
# (op, input index) that ONNX requires in float32 whatever the data type (Resize scales)
_KEEP_FLOAT32 = {("Resize", 2)}


def _half(tensor: onnx.TensorProto) -> onnx.TensorProto:
    array = numpy_helper.to_array(tensor).astype(np.float32)
    return numpy_helper.from_array(np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16), tensor.name)


def convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of `model` with float32 graph input/output (pure: the argument is not changed)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    keep = {
        node.input[i] for node in graph.node for op, i in _KEEP_FLOAT32 if node.op_type == op and len(node.input) > i
    }
    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            graph.initializer[index].CopyFrom(_half(init))
    for node in graph.node:
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_half(attr.t))
    casts = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            half = value.name + "_fp16"
            for node in graph.node:
                node.input[:] = [half if name == value.name else name for name in node.input]
            casts.append(helper.make_node("Cast", [value.name], [half], to=TensorProto.FLOAT16, name=half + "_cast"))
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    for value in graph.output:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            half = value.name + "_fp16"
            for node in graph.node:
                node.output[:] = [half if name == value.name else name for name in node.output]
            graph.node.append(helper.make_node("Cast", [half], [value.name], to=TensorProto.FLOAT, name=half + "_cast"))
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def write_fp16(src: Path, dst: Path) -> Path:
    """dst = FP16 copy of src, checked by onnx.checker, written atomically."""
    try:
        model = convert_fp16(onnx.load(str(src)))
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise EikdError(f"cannot make an FP16 ONNX from {src.name}: {str(exc).splitlines()[0]}") from None
    return write_atomic(dst, lambda tmp: onnx.save(model, str(tmp)))
