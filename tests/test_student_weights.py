"""Pretrained students: a torchvision-format state_dict (or torchvision's cached named weights) loads strictly into
the student, the classifier starts fresh at the teacher's class count, and the run records what it started from.

The "pretrained" files are made here: small real students whose weights are set deterministically and differ from
any fresh initialisation, saved with another class count.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.errors import EikdError
from eikd_edge.models.pretrained import build_student, load_student_weights
from eikd_edge.models.taps import find_classifier
from eikd_edge.models.teacher import file_sha256
from eikd_edge.models.zoo import build_model

runner = CliRunner()
FAST = ["train.epochs=1", "train.batch_size=16", "student.width=0.5", "selection.batch_size=64"]
SETS = [arg for item in FAST for arg in ("--set", item)]


def _distill(teacher: Path, pool: Path, out: Path) -> list[str]:
    return ["distill", "-t", str(teacher), "-u", str(pool), "-o", str(out), *SETS]


def _pretrained(arch: str, classes: int, path: Path, width: float = 1.0) -> dict[str, torch.Tensor]:
    """A state_dict unlike any fresh one: every float tensor (running statistics too) set from its own seed."""
    model = build_model(arch, classes, **({"width": width} if width != 1.0 else {}))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    state = model.state_dict()
    torch.save(state, path)
    return state


@pytest.mark.parametrize(("arch", "width"), [("cifar_resnet8", 0.5), ("mobilenet_v3_small", 1.0)])
def test_every_tensor_but_the_classifier_is_loaded(tmp_path: Path, arch: str, width: float) -> None:
    saved = _pretrained(arch, 5, tmp_path / "w.pt", width)
    torch.manual_seed(3)
    fresh = build_model(arch, 10, **({"width": width} if width != 1.0 else {}))
    torch.manual_seed(3)
    student, record = build_student(arch, 10, width, str(tmp_path / "w.pt"))
    head = find_classifier(student, 10)
    assert head is not None and record is not None
    skipped = {head.weight_name, head.bias_name}
    state = student.state_dict()
    for key, tensor in state.items():
        if key in skipped:
            assert tensor.shape[0] == 10 and saved[key].shape[0] == 5
            assert torch.equal(tensor, fresh.state_dict()[key]), f"{key} is not a fresh initialisation"
        else:
            assert torch.equal(tensor, saved[key]), key
    assert record.sha256 == file_sha256(tmp_path / "w.pt")
    assert set(record.reinitialised) == skipped and record.loaded == len(state) - 2


def test_checkpoints_and_ddp_prefixes_are_read(tmp_path: Path) -> None:
    saved = _pretrained("cifar_resnet8", 10, tmp_path / "plain.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}, "epoch": 3}, tmp_path / "ckpt.pt")
    student, _ = build_student("cifar_resnet8", 4, 1.0, str(tmp_path / "ckpt.pt"))
    assert torch.equal(student.state_dict()["stem.0.weight"], saved["stem.0.weight"])


@pytest.mark.parametrize(
    ("source_arch", "width", "words"),
    [
        ("cifar_resnet14", 1.0, ["does not fit the student cifar_resnet8", "unexpected (layers.3.conv1.weight"]),
        ("cifar_resnet8", 0.5, ["does not fit", "of another shape", "stem.0.weight [8, 3, 3, 3] vs [16, 3, 3, 3]"]),
        ("resnet18", 1.0, ["does not fit", "missing", "unexpected"]),
    ],
)
def test_weights_of_another_architecture_are_refused_naming_keys(
    tmp_path: Path, source_arch: str, width: float, words: list[str]
) -> None:
    _pretrained(source_arch, 10, tmp_path / "w.pt", width)
    with pytest.raises(EikdError) as caught:
        build_student("cifar_resnet8", 10, 1.0, str(tmp_path / "w.pt"))
    message = str(caught.value)
    assert all(word in message for word in words), message
    assert "\n" not in message


def test_a_pickled_model_needs_trust(tmp_path: Path) -> None:
    model = build_model("cifar_resnet8", 3)
    torch.save(model, tmp_path / "model.pt")
    with pytest.raises(EikdError, match=r"pickled Python object.*--trust-pickle"):
        build_student("cifar_resnet8", 10, 1.0, str(tmp_path / "model.pt"))
    student, _ = build_student("cifar_resnet8", 10, 1.0, str(tmp_path / "model.pt"), trust_pickle=True)
    assert torch.equal(student.state_dict()["stem.0.weight"], model.state_dict()["stem.0.weight"])


def test_code_in_a_weights_file_never_runs(tmp_path: Path) -> None:
    from tests.test_hostile_files import _plant_pickle

    marker = tmp_path / "code_ran"
    _plant_pickle(tmp_path / "w.pt", marker)
    with pytest.raises(EikdError, match="--trust-pickle"):
        build_student("cifar_resnet8", 10, 1.0, str(tmp_path / "w.pt"))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"not a torch file at all", "damaged or not a PyTorch file"),
        ([1, 2, 3], "not a state_dict of tensors"),
        ("nan", "NaN or Inf in stem.0.weight"),
    ],
)
def test_broken_files_are_one_line_errors(tmp_path: Path, payload: object, words: str) -> None:
    path = tmp_path / "w.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    elif payload == "nan":
        state = build_model("cifar_resnet8", 10).state_dict()
        state["stem.0.weight"][0, 0, 0, 0] = float("nan")
        torch.save(state, path)
    else:
        torch.save(payload, path)
    with pytest.raises(EikdError, match=words):
        build_student("cifar_resnet8", 10, 1.0, str(path))


def test_named_weights_come_only_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = build_model("mobilenet_v3_small", 10)
    with pytest.raises(EikdError) as caught:
        load_student_weights(model, "mobilenet_v3_small", 10, "imagenet")
    message = str(caught.value)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    assert "not in the local torch cache" in message and str(cached) in message and "does not download" in message
    assert not cached.exists()
    cached.parent.mkdir(parents=True)
    saved = _pretrained("mobilenet_v3_small", 1000, cached)
    record = load_student_weights(model, "mobilenet_v3_small", 10, "DEFAULT")
    assert record.source == "mobilenet_v3_small:IMAGENET1K_V1" and record.path == cached
    assert torch.equal(model.state_dict()["features.0.0.weight"], saved["features.0.0.weight"])
    with pytest.raises(EikdError, match=r"no such file.*IMAGENET1K_V1"):
        load_student_weights(model, "mobilenet_v3_small", 10, "imagenet21k")
    with pytest.raises(EikdError, match=r"no such file; give a state_dict file$"):
        load_student_weights(build_model("cifar_resnet8", 10), "cifar_resnet8", 10, "imagenet")


def test_distill_records_the_weights_and_refuses_a_bad_file(
    tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    weights = tmp_path / "pretrained.pt"
    _pretrained("cifar_resnet8", 4, weights, width=0.5)
    out = tmp_path / "run"
    args = _distill(script_teacher, digit_images, out)
    result = runner.invoke(app, [*args, "--student-weights", str(weights), "--keep-state"], terminal_width=200)
    assert result.exit_code == 0, result.output
    digest = file_sha256(weights)
    recorded = json.loads((out / "metrics.json").read_text())["student"]["weights"]
    assert recorded["sha256"] == digest and recorded["source"] == str(weights.resolve())
    assert torch.load(out / "student.pt", weights_only=True)["student_weights"]["sha256"] == digest
    resolved = yaml.safe_load((out / "recipe.resolved.yaml").read_text())
    assert resolved["recipe"]["student"]["weights"] == str(weights.resolve())
    weights.unlink()  # --resume restores the training state: the weights file is no longer needed
    resumed = runner.invoke(app, [*args, "--resume", "--student-weights", str(weights.resolve())])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "metrics.json").read_text())["student"]["weights"]["sha256"] == digest

    wrong = tmp_path / "wrong.pt"
    _pretrained("cifar_resnet14", 10, wrong, width=0.5)
    refused = runner.invoke(
        app, [*_distill(script_teacher, digit_images, tmp_path / "r2"), "--student-weights", str(wrong)]
    )
    assert refused.exit_code == 1
    lines = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "does not fit the student cifar_resnet8" in lines[0], refused.output
    assert "Traceback" not in refused.output
