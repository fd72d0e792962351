"""Every teacher format loads with its spec and exposes embeddings; every wrong teacher is one clear error."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from eikd_edge.errors import EikdError
from eikd_edge.models.teacher import load_teacher
from eikd_edge.models.zoo import build_model
from tests.conftest import save_torchscript, tiny_classifier, write_sidecar


def _reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth logits and penultimate embedding via a plain forward hook on the original module."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        captured["f"] = inputs[0]

    handle = model.fc.register_forward_hook(hook)
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    return logits, captured["f"]


def _save(kind: str, model: nn.Module, path: Path) -> Path:
    if kind == "torchscript":
        return save_torchscript(model, path)
    if kind == "torch.export":
        program = torch.export.export(model, (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: torch.export.Dim("b")},))
        torch.export.save(program, str(path))
        return path
    if kind == "state_dict":
        torch.save(model.state_dict(), path)
        return path
    if kind == "pickle":
        torch.save(model, path)
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["torchscript", "torch.export", "pickle"])
def test_every_format_loads_with_spec_and_true_embeddings(tmp_path: Path, kind: str) -> None:
    model = tiny_classifier(seed=3)
    x = torch.randn(5, 3, 32, 32)
    ref_logits, ref_embedding = _reference(model, x)
    path = _save(kind, model, tmp_path / ("t.pt2" if kind == "torch.export" else "t.pt"))
    write_sidecar(path)
    teacher = load_teacher(path, trust_pickle=kind == "pickle")
    assert teacher.format == kind
    assert teacher.num_classes == 10 and teacher.spec.input_size == (32, 32)
    assert teacher.embedding_dim == 32
    logits, embedding = teacher.predict(x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(embedding, ref_embedding, rtol=1e-4, atol=1e-4)
    assert teacher.num_parameters() == sum(p.numel() for p in tiny_classifier().parameters())


def test_state_dict_with_arch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("cifar_resnet14", 10).eval()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    write_sidecar(path)
    x = torch.randn(3, 3, 32, 32)
    expected = model(x).detach()
    teacher = load_teacher(path, arch="cifar_resnet14")
    assert teacher.format == "state_dict"
    torch.testing.assert_close(teacher.predict(x)[0], expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(EikdError, match="--teacher-arch"):
        load_teacher(path)
    with pytest.raises(EikdError, match="does not fit --teacher-arch"):
        load_teacher(path, arch="cifar_resnet8")


def test_torchvision_state_dict_without_sidecar_uses_flags(tmp_path: Path) -> None:
    model = build_model("mobilenet_v3_small", 4).eval()
    path = tmp_path / "mnv3.pth"
    torch.save({"state_dict": model.state_dict(), "arch": "mobilenet_v3_small"}, path)
    teacher = load_teacher(path, spec_overrides={"input_size": "64", "classes": ["a", "b", "c", "d"]})
    assert teacher.format == "checkpoint" and teacher.spec.classes == ("a", "b", "c", "d")
    assert teacher.embedding_dim == 1024


class _Payload:
    """Unpickling this creates a marker file: proof that code in a pickle would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_refused_without_trust_and_no_code_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, path)
    with pytest.raises(EikdError, match="--trust-pickle"):
        load_teacher(path)
    assert not marker.exists()


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    path = _save("pickle", tiny_classifier(), tmp_path / "full.pt")
    write_sidecar(path)
    with pytest.raises(EikdError, match="unpickling runs code"):
        load_teacher(path)
    assert load_teacher(path, trust_pickle=True).format == "pickle"


def test_wrong_class_count_names_the_fix(tmp_path: Path, script_teacher: Path) -> None:
    with pytest.raises(EikdError, match="outputs 10 classes but its spec names 3"):
        load_teacher(script_teacher, spec_overrides={"classes": ["a", "b", "c"]})


def test_wrong_input_size_is_one_line(tmp_path: Path) -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    path = save_torchscript(Fixed(), tmp_path / "fixed.pt")
    write_sidecar(path, {"input_size": [64, 64]})
    with pytest.raises(EikdError, match="failed a dry forward on 3x64x64") as info:
        load_teacher(path)
    assert "\n" not in str(info.value)
    assert load_teacher(path, spec_overrides={"input_size": "32"}).embedding_dim == 3 * 32 * 32


@pytest.mark.parametrize(
    "content", [b"", b"hello, not a model", bytes(range(256)) * 40], ids=["empty", "text", "binary"]
)
def test_not_a_model(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "thing.pt"
    path.write_bytes(content)
    with pytest.raises(EikdError, match="not a model eikd-edge can read"):
        load_teacher(path)


def test_non_tensor_dict_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "dict.pt"
    torch.save({"epoch": 3, "note": "no weights"}, path)
    with pytest.raises(EikdError, match="not a state_dict"):
        load_teacher(path, arch="cifar_resnet8")
    with pytest.raises(EikdError, match="not found"):
        load_teacher(tmp_path / "absent.pt")


def test_nan_teacher_is_refused(tmp_path: Path) -> None:
    model = tiny_classifier()
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    path = save_torchscript(model, tmp_path / "nan.pt")
    write_sidecar(path)
    with pytest.raises(EikdError, match="NaN"):
        load_teacher(path)


def test_teacher_without_linear_head_falls_back_to_logits(tmp_path: Path) -> None:
    """A conv classifier (SqueezeNet-style) exposes no penultimate embedding: logits are used instead."""
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = save_torchscript(model, tmp_path / "conv.pt")
    write_sidecar(path)
    teacher = load_teacher(path)
    assert teacher.embedding_dim is None
    logits, embedding = teacher.predict(torch.randn(2, 3, 32, 32))
    assert torch.equal(logits, embedding)


@pytest.mark.parametrize("size", [[3, 32, 32], [32, 32], "3x32x32"])
def test_sidecar_input_size_channels_first_or_height_width(tmp_path: Path, size: object) -> None:
    path = save_torchscript(tiny_classifier(), tmp_path / "teacher.pt")
    write_sidecar(path, {"input_size": size})
    assert load_teacher(path).spec.input_size == (32, 32)


def test_sidecar_input_size_with_other_than_three_channels_is_one_line(tmp_path: Path) -> None:
    path = save_torchscript(tiny_classifier(), tmp_path / "teacher.pt")
    write_sidecar(path, {"input_size": [1, 32, 32]})
    with pytest.raises(EikdError, match="1 channels") as info:
        load_teacher(path)
    assert "\n" not in str(info.value)
