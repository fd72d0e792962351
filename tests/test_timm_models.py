"""timm students and teachers (`timm:NAME`): built without downloads, teacher specs from pretrained_cfg, fusion.

Tiny real timm models (timm's own `test_*` models and the curated edge students at 32 px), random weights made
here; nothing is fetched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

pytest.importorskip("timm")

from eikd_edge.checkpoint import load_student
from eikd_edge.cli import app
from eikd_edge.data import decode_image
from eikd_edge.distill.step import DistillNet
from eikd_edge.errors import EikdError
from eikd_edge.models import timm_zoo
from eikd_edge.models.teacher import load_teacher
from eikd_edge.models.zoo import build_model, for_export
from tests.conftest import write_sidecar

runner = CliRunner()
REPARAMETERISABLE = ("timm:repvit_m0_9", "timm:fastvit_t8", "timm:mobileone_s0")
CLASSES = [f"c{i}" for i in range(10)]


def _one_line_error(output: str, *words: str) -> None:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for word in words:
        assert word in " ".join(output.split()), output


def _timm_state_dict(name: str, path: Path, classes: int = 10, seed: int = 0) -> Path:
    import timm

    torch.manual_seed(seed)
    torch.save(timm.create_model(name, pretrained=False, num_classes=classes).state_dict(), path)
    return path


def test_a_timm_student_builds_with_the_class_count_and_trains_through_the_tap() -> None:
    model = build_model("timm:mobilenetv4_conv_small", 7)
    net = DistillNet(model, 7, 16, use_projector=True, use_noise=False)
    logits, embedding, projected = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and embedding.shape[0] == 2 and projected.shape == (2, 16)
    projected.sum().backward()  # the embedding tap keeps the graph: the feature loss reaches the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_an_unknown_timm_name_is_one_error_with_suggestions() -> None:
    with pytest.raises(EikdError, match=r"unknown timm model 'mobilenetv4_conv_smal'.*timm:mobilenetv4_conv_small"):
        build_model("timm:mobilenetv4_conv_smal", 3)
    with pytest.raises(EikdError, match="no width option"):
        build_model("timm:mobilenetv4_conv_small", 3, width=0.5)


def test_a_timm_teacher_takes_its_input_spec_from_pretrained_cfg(tmp_path: Path) -> None:
    """test_vit was trained (in timm's config) at 160 px with mean = std = 0.5: the spec says so, not ImageNet's."""
    path = _timm_state_dict("test_vit", tmp_path / "vit.pt")
    teacher = load_teacher(path, "timm:test_vit")
    assert teacher.format == "state_dict" and teacher.num_classes == 10
    assert teacher.spec.input_size == (160, 160)
    assert teacher.spec.mean == (0.5, 0.5, 0.5) and teacher.spec.std == (0.5, 0.5, 0.5)
    assert timm_zoo.input_defaults("timm:test_vit") == {
        "input_size": [160, 160],
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bicubic",
        "resize": "center_crop",
        "crop_pct": 0.95,
    }


def test_the_sidecar_and_the_flags_override_pretrained_cfg(tmp_path: Path) -> None:
    path = _timm_state_dict("test_vit", tmp_path / "vit.pt")
    write_sidecar(path, {"arch": "timm:test_vit", "input_size": [64, 64], "classes": CLASSES})
    teacher = load_teacher(path)  # the architecture named by the sidecar alone
    assert teacher.spec.input_size == (64, 64) and teacher.spec.mean == (0.5, 0.5, 0.5)
    assert teacher.spec.classes == tuple(CLASSES)
    flagged = load_teacher(path, spec_overrides={"mean": "0.1,0.2,0.3", "input_size": "32"})
    assert flagged.spec.input_size == (32, 32) and flagged.spec.mean == (0.1, 0.2, 0.3)


def test_a_timm_teacher_is_fed_by_its_pretrained_cfg_crop_and_interpolation(tmp_path: Path) -> None:
    """test_vit's cfg: 160 px, crop_pct 0.95, bicubic. A 640x480 photo is resized to cover 168x168
    (floor(160 / 0.95)) with bicubic filtering and its centre 160x160 cut out, as timm's eval transform does."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    teacher = load_teacher(_timm_state_dict("test_vit", tmp_path / "vit.pt"), "timm:test_vit")
    spec = teacher.spec
    assert (spec.resize, spec.crop_pct, spec.interpolation) == ("center_crop", 0.95, "bicubic")
    photo = Image.fromarray(load_sample_image("china.jpg")).resize((640, 480))
    photo.save(tmp_path / "photo.png")
    expected = photo.resize((224, 168), Image.Resampling.BICUBIC).crop((32, 4, 192, 164))  # 640*168/480 = 224
    assert np.array_equal(decode_image(tmp_path / "photo.png", spec), np.asarray(expected))


def test_the_sidecar_and_flags_override_the_pretrained_cfg_policy(tmp_path: Path) -> None:
    path = _timm_state_dict("test_vit", tmp_path / "vit.pt")
    write_sidecar(path, {"arch": "timm:test_vit", "resize": "squash", "classes": CLASSES})
    squashed = load_teacher(path).spec  # the sidecar's geometry replaces timm's crop; interpolation stays timm's
    assert (squashed.resize, squashed.crop_pct, squashed.interpolation) == ("squash", 1.0, "bicubic")
    write_sidecar(path, {"arch": "timm:test_vit", "interpolation": "nearest", "classes": CLASSES})
    nearest = load_teacher(path).spec
    assert (nearest.resize, nearest.crop_pct, nearest.interpolation) == ("center_crop", 0.95, "nearest")
    flagged = load_teacher(path, spec_overrides={"resize_size": 192, "interpolation": "bilinear"}).spec
    assert flagged.crop_pct == pytest.approx(160 / 192) and flagged.interpolation == "bilinear"
    result = runner.invoke(app, ["inspect", str(path), "--resize", "letterbox"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "letterbox: fit inside 160x160, pad 0, nearest" in result.output


def test_a_timm_state_dict_loads_into_the_named_arch_and_computes_the_same(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(4)
    original = timm.create_model("test_efficientnet", pretrained=False, num_classes=10).eval()
    path = tmp_path / "t.pt"
    torch.save(original.state_dict(), path)
    teacher = load_teacher(path, "timm:test_efficientnet", spec_overrides={"input_size": "32"})
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = original(x)
    logits, _ = teacher.predict(x)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_a_wrong_or_unknown_timm_teacher_arch_is_one_line(tmp_path: Path) -> None:
    path = _timm_state_dict("test_vit", tmp_path / "vit.pt")
    unknown = runner.invoke(app, ["inspect", str(path), "--teacher-arch", "timm:test_vitt"])
    assert unknown.exit_code == 1
    _one_line_error(unknown.output, "unknown timm model", "timm:test_vit")
    wrong = runner.invoke(app, ["inspect", str(path), "--teacher-arch", "timm:test_convnext"])
    assert wrong.exit_code == 1
    _one_line_error(wrong.output, "does not fit --teacher-arch timm:test_convnext")


def test_a_missing_timm_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    """timm made unimportable in a fresh interpreter, as on an install without the extra."""
    code = (
        "import sys; sys.modules['timm'] = None\n"
        "from eikd_edge.cli import main\n"
        "sys.argv = ['eikd-edge', *sys.argv[1:]]\n"
        "main()\n"
    )
    for args in (["models", "--source", "timm"], ["inspect", str(_timm_state_dict("test_vit", tmp_path / "v.pt")),
                                                     "--teacher-arch", "timm:test_vit"]):  # fmt: skip
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stdout + done.stderr
        _one_line_error(done.stdout + done.stderr, "pip install 'eikd-edge[timm]'")


def test_models_lists_the_curated_timm_students_with_params_and_macs() -> None:
    result = runner.invoke(app, ["models", "--source", "timm", "--input-size", "64"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "3x64x64" in result.output
    for name in timm_zoo.curated_students():
        row = next(line for line in result.output.splitlines() if name in line)
        assert "n/a" not in row and "ok" in row, row


def test_distill_with_a_timm_teacher_and_a_timm_student(tmp_path: Path, digit_images: Path) -> None:
    teacher = _timm_state_dict("test_vit", tmp_path / "vit.pt", seed=1)
    write_sidecar(teacher, {"arch": "timm:test_vit", "input_size": [32, 32], "classes": CLASSES})
    out = tmp_path / "run"
    sets = ["train.epochs=1", "train.batch_size=16", "selection.batch_size=64"]
    args = ["distill", "-t", str(teacher), "-u", str(digit_images), "-o", str(out)]
    args += ["--student", "timm:test_efficientnet", *(a for s in sets for a in ("--set", s))]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ckpt = load_student(out / "student.pt")
    assert ckpt.arch == "timm:test_efficientnet" and ckpt.spec.mean == (0.5, 0.5, 0.5)
    assert ckpt.model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so a fusion that mishandles BatchNorm shows in the outputs."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


@pytest.mark.parametrize("arch", REPARAMETERISABLE)
def test_fusion_merges_branches_and_keeps_the_function(arch: str) -> None:
    torch.manual_seed(0)
    model = _randomise_batchnorm(build_model(arch, 10))
    fused = for_export(model, arch)
    assert fused is not model  # a copy: the checkpoint's model stays trainable
    convs = [sum(isinstance(m, nn.Conv2d) for m in net.modules()) for net in (model, fused)]
    assert convs[1] < convs[0], convs
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), fused(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
