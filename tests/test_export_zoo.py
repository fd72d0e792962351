"""Every student `eikd-edge models` offers exports: ONNX opset 17, dynamic batch, FP32 parity, ORT INT8.

The timm test pattern: each registered model gets the same check, on 32-pixel inputs with random weights. Three
representatives run by default (a CIFAR ResNet, a torchvision model, a re-parameterised timm model); the whole
list is marked slow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from eikd_edge.checkpoint import load_student, save_student
from eikd_edge.export.int8_settings import QuantSetting, quantize_one
from eikd_edge.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.zoo import build_model, export_status, for_export, list_architectures
from eikd_edge.ort_session import session

HAS_TIMM = importlib.util.find_spec("timm") is not None
DEFAULT_RUN = ("cifar_resnet8", "mobilenet_v3_small", "timm:repvit_m0_9")
SIZE = 32


def _offered() -> list[pytest.param]:
    """Every architecture `models` and `models --source timm` list, the default-run ones unmarked."""
    params = []
    for info in list_architectures(source="all"):
        marks = [] if info.name in DEFAULT_RUN else [pytest.mark.slow]
        if info.family == "timm" and not HAS_TIMM:
            marks.append(pytest.mark.skip(reason="timm is not installed (pip install 'eikd-edge[timm]')"))
        params.append(pytest.param(info.name, marks=marks, id=info.name))
    return params


@pytest.mark.parametrize("arch", _offered())
def test_every_offered_student_exports_to_onnx_and_int8(arch: str, tmp_path: Path) -> None:
    assert export_status(arch) == "ok"  # what `models` promises for it
    torch.manual_seed(0)
    spec = InputSpec((SIZE, SIZE)).with_classes([str(i) for i in range(10)])
    ckpt = load_student(save_student(tmp_path / "student.pt", build_model(arch, 10), arch, {}, spec))
    built = export_onnx(ckpt, tmp_path / "student.onnx", opset=17)  # raises unless it matches PyTorch at b=1 and 7
    assert built.opset == 17 and built.self_check_max_abs_dlogit <= 1e-4 * max(1.0, _scale(ckpt.model))
    proto = onnx.load(str(built.path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 3, SIZE, SIZE)).astype(np.float32)
    int8 = quantize_one(built.path, tmp_path / "student.int8.onnx", QuantSetting("u8"), calib, None)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(int8)).graph.node}
    x = calib[:5]
    fp32_logits = session(built.path, 1).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    int8_logits = session(int8, 1).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    assert int8_logits.shape == fp32_logits.shape == (5, 10) and np.isfinite(int8_logits).all()


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed")
def test_export_gets_the_fused_model(tmp_path: Path) -> None:
    """The ONNX graph of a re-parameterisable student has the fused model's convolutions, not the branches."""
    arch = "timm:mobileone_s0"
    spec = InputSpec((SIZE, SIZE)).with_classes([str(i) for i in range(10)])
    model = build_model(arch, 10).eval()
    ckpt = load_student(save_student(tmp_path / "student.pt", model, arch, {}, spec))
    built = export_onnx(ckpt, tmp_path / "student.onnx", opset=17)
    onnx_convs = sum(node.op_type == "Conv" for node in onnx.load(str(built.path)).graph.node)
    convs = [sum(isinstance(m, nn.Conv2d) for m in net.modules()) for net in (model, for_export(model, arch))]
    assert onnx_convs == convs[1] < convs[0], (onnx_convs, convs)


@torch.no_grad()
def _scale(model: nn.Module) -> float:
    return float(model.eval()(torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))).abs().max())
