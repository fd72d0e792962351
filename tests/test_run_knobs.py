"""The knobs users ask for on real runs: class files for --classes, a warning for a student as large as its teacher,
train_state.pt dropped at the end (--keep-state keeps it), --threads on distill/select, train.amp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from eikd_edge.amp import autocast_dtype, grad_scaler
from eikd_edge.cli import app
from eikd_edge.commands.options import parse_class_option, torch_threads
from eikd_edge.config import load_recipe
from eikd_edge.errors import EikdError
from eikd_edge.models.pretrained import build_student
from eikd_edge.models.zoo import build_model, size_warning
from tests.conftest import save_torchscript, tiny_classifier

runner = CliRunner()
FAST = ["train.epochs=1", "train.batch_size=16", "student.width=0.5", "selection.batch_size=64"]
SETS = [arg for item in FAST for arg in ("--set", item)]
IMAGENET_STYLE = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark, white shark"]


def _distill(teacher: Path, pool: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "-t", str(teacher), "-u", str(pool), "-o", str(out), *SETS, *extra]


def _errors(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("error:")]


# --- --classes: a file, one name per line ----------------------------------------------------------------------------


def test_class_files_keep_names_with_commas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = tmp_path / "names.txt"
    names.write_text("\ufeff" + "\n".join(IMAGENET_STYLE) + "\n\n", encoding="utf-8")
    assert parse_class_option(f"@{names}") == IMAGENET_STYLE
    assert parse_class_option(str(names)) == IMAGENET_STYLE
    monkeypatch.chdir(tmp_path)
    assert parse_class_option("@names.txt") == IMAGENET_STYLE
    assert parse_class_option("cat, dog,bird") == ["cat", "dog", "bird"]
    with pytest.raises(EikdError, match="class file not found"):
        parse_class_option("@missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(EikdError, match="holds no class names"):
        parse_class_option("@empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(EikdError, match="not UTF-8"):
        parse_class_option("@latin1.txt")


def test_a_class_file_names_the_teachers_classes(tmp_path: Path) -> None:
    teacher = save_torchscript(tiny_classifier(), tmp_path / "t.pt")
    names = tmp_path / "names.txt"
    names.write_text("\n".join([*IMAGENET_STYLE, *(f"class {i}" for i in range(7))]))
    result = runner.invoke(app, ["inspect", str(teacher), "--input-size", "32", "--classes", f"@{names}"])
    assert result.exit_code == 0, result.output
    assert "10: tench, Tinca tinca" in " ".join(result.output.split())


def test_a_state_dict_teacher_with_the_wrong_class_count_names_both(tmp_path: Path) -> None:
    teacher = tmp_path / "t.pt"
    torch.save(build_model("cifar_resnet8", 10).state_dict(), teacher)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(IMAGENET_STYLE))
    args = ["inspect", str(teacher), "--teacher-arch", "cifar_resnet8", "--input-size", "32", "--classes", f"@{names}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    errors = _errors(result.output)
    assert len(errors) == 1 and "outputs 10 classes but its spec names 3" in errors[0], result.output
    assert "size mismatch" not in result.output


# --- a student as large as its teacher -------------------------------------------------------------------------------


def test_size_warning_threshold() -> None:
    assert size_warning("resnet18", 11_000_000, 11_700_000) is not None
    assert size_warning("resnet18", 8_000_000, 10_000_000) is not None
    assert size_warning("mobilenet_v3_small", 2_500_000, 25_000_000) is None
    message = size_warning("resnet18", 11_690_000, 11_690_000)
    assert message is not None and "1.00x" in message and "--student" in message


def test_distill_warns_about_a_student_as_large_as_its_teacher(
    tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    same = runner.invoke(app, _distill(script_teacher, digit_images, tmp_path / "same"), terminal_width=200)
    assert same.exit_code == 0, same.output
    assert "warning: the student cifar_resnet8 has" in " ".join(same.output.split())
    small = runner.invoke(
        app, _distill(script_teacher, digit_images, tmp_path / "small", "--set", "student.width=0.25")
    )
    assert small.exit_code == 0, small.output
    assert "warning: the student cifar_resnet8 has" not in " ".join(small.output.split())


# --- train_state.pt at the end of a run ------------------------------------------------------------------------------


def test_a_finished_run_drops_its_training_state_unless_kept(
    tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    out = tmp_path / "run"
    assert runner.invoke(app, _distill(script_teacher, digit_images, out)).exit_code == 0
    assert not (out / "train_state.pt").exists()
    assert (out / "student.pt").is_file() and (out / "metrics.json").is_file()
    resumed = runner.invoke(app, _distill(script_teacher, digit_images, out, "--resume"))
    assert resumed.exit_code == 1
    errors = _errors(resumed.output)
    assert len(errors) == 1 and "the run finished" in errors[0] and "--overwrite" in errors[0], resumed.output
    refused = runner.invoke(app, _distill(script_teacher, digit_images, out))
    assert refused.exit_code == 1 and "--resume" not in refused.output
    kept = tmp_path / "kept"
    assert runner.invoke(app, _distill(script_teacher, digit_images, kept, "--keep-state")).exit_code == 0
    assert (kept / "train_state.pt").is_file()
    again = runner.invoke(app, _distill(script_teacher, digit_images, kept, "--resume", "--keep-state"))
    assert again.exit_code == 0, again.output
    overwritten = runner.invoke(app, _distill(script_teacher, digit_images, kept, "--overwrite"))
    assert overwritten.exit_code == 0, overwritten.output
    assert not (kept / "train_state.pt").exists()


# --- --threads -------------------------------------------------------------------------------------------------------


def test_threads_apply_for_the_command_and_are_restored() -> None:
    before = torch.get_num_threads()
    with torch_threads(2) as count:
        assert count == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with torch_threads(None) as count:
        assert count is None and torch.get_num_threads() == before
    with torch_threads(0) as count:
        assert count is not None and count >= 1 and torch.get_num_threads() == count
    assert torch.get_num_threads() == before


def test_distill_and_select_take_threads(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    before = torch.get_num_threads()
    result = runner.invoke(app, _distill(script_teacher, digit_images, tmp_path / "d", "--threads", "2"))
    assert result.exit_code == 0, result.output
    selected = runner.invoke(
        app, ["select", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(tmp_path / "s"), "--threads", "1"]
    )
    assert selected.exit_code == 0, selected.output
    assert json.loads((tmp_path / "s" / "selection.json").read_text())["selected_count"] == 45
    assert torch.get_num_threads() == before


# --- train.amp -------------------------------------------------------------------------------------------------------


def test_amp_setting_is_validated() -> None:
    assert load_recipe(None).train.amp == "auto"
    assert load_recipe(None, ["train.amp=fp16"]).train.amp == "fp16"
    with pytest.raises(EikdError, match=r"train\.amp"):
        load_recipe(None, ["train.amp=fp8"])


@pytest.mark.parametrize(
    ("setting", "device", "native_bf16", "expected"),
    [
        ("auto", "cpu", None, None),
        ("off", "cpu", None, None),
        ("bf16", "cpu", None, torch.bfloat16),
        ("auto", "cuda", True, torch.bfloat16),
        ("auto", "cuda", False, torch.float16),
        ("fp16", "cuda", True, torch.float16),
        ("bf16", "cuda", True, torch.bfloat16),
        ("off", "cuda", False, None),
    ],
)
def test_amp_dtype_choice(setting: str, device: str, native_bf16: bool | None, expected: torch.dtype | None) -> None:
    assert autocast_dtype(setting, torch.device(device), native_bf16) == expected


@pytest.mark.parametrize(
    ("setting", "device", "words"), [("fp16", "cpu", "needs a CUDA GPU"), ("bf16", "cuda", "no native bf16")]
)
def test_amp_refuses_what_the_device_cannot_do(setting: str, device: str, words: str) -> None:
    with pytest.raises(EikdError, match=words):
        autocast_dtype(setting, torch.device(device), False)


def test_grad_scaler_only_scales_fp16() -> None:
    assert not grad_scaler(torch.device("cpu"), None).is_enabled()
    assert not grad_scaler(torch.device("cpu"), torch.bfloat16).is_enabled()


def test_distill_trains_with_bf16_autocast_on_cpu(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    out = tmp_path / "bf16"
    result = runner.invoke(app, _distill(script_teacher, digit_images, out, "--set", "train.amp=bf16"))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["history"][0]["loss"]["total"] > 0
    refused = runner.invoke(app, _distill(script_teacher, digit_images, tmp_path / "fp16", "--set", "train.amp=fp16"))
    assert refused.exit_code == 1
    assert len(_errors(refused.output)) == 1 and "needs a CUDA GPU" in refused.output


def test_build_model_unchanged_for_unpretrained_students() -> None:
    torch.manual_seed(0)
    a = build_model("cifar_resnet8", 10).state_dict()
    torch.manual_seed(0)
    b, record = build_student("cifar_resnet8", 10)
    assert record is None and all(torch.equal(a[k], v) for k, v in b.state_dict().items())
