"""Tests that see learning: the student must actually improve, every loss term must be wired as documented, and
DDP ranks must train one model. Each fails when the behaviour breaks (no optimizer step, no class-dropping mask,
no DDP wrapper), not merely when the code stops running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from eikd_edge.agreement import near_chance
from eikd_edge.checkpoint import load_student
from eikd_edge.cli import app
from eikd_edge.config import load_recipe
from eikd_edge.data import load_labeled_folder
from eikd_edge.distill import DistillInputs, distill
from eikd_edge.distill.evaluate import predict_logits
from eikd_edge.distill.losses import (
    NoiseAdaptation,
    class_drop_kd,
    contrastive_relation_loss,
    feature_loss,
    kept_class_mask,
)
from eikd_edge.distill.step import distillation_loss
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import TeacherModel, load_teacher
from eikd_edge.models.zoo import build_model
from tests.run_fixture import FixtureRun, fresh_run

# The fixture teacher is a random convolutional body with a fitted head: right on clean digits, erratic on shifted
# ones, so it labels the un-augmented images here (cached targets); the bundled example's real teacher runs online.
LEARN = ["student.width=0.5", "train.batch_size=32", "train.steps=90", "train.device=cpu",
         "train.teacher_targets=cached", "train.mix=none", "selection.keep_fraction=1.0"]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    """The fitted teacher (about 77% on handwritten digits) and its labeled val folder."""
    return fresh_run(tmp_path_factory, "learning")


@pytest.fixture(scope="module")
def digit_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real handwritten digits the teacher never trained on, as unlabeled 8x8 PNGs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path_factory.mktemp("learn-pool")
    for i in range(1100, 1400):
        pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return folder


def test_distillation_lifts_the_student_far_above_its_untrained_self(
    tmp_path: Path, fitted: FixtureRun, digit_pool: Path
) -> None:
    """90 steps of default EIKD: held-out agreement and val top-1 rise far above the untrained student's."""
    teacher = load_teacher(fitted.teacher)
    images, labels, _ = load_labeled_folder(fitted.val, teacher.spec)
    teacher_top1 = float(
        (predict_logits(_Logits(teacher), images, teacher.spec, torch.device("cpu")).argmax(1) == labels).float().mean()
    )
    torch.manual_seed(0)
    untrained = build_model("cifar_resnet8", 10, width=0.5)
    untrained_top1 = float(
        (predict_logits(untrained, images, teacher.spec, torch.device("cpu")).argmax(1) == labels).float().mean()
    )

    result = distill(DistillInputs(fitted.teacher, digit_pool, fitted.val), load_recipe(None, LEARN), tmp_path / "run")
    student_top1 = result.metrics["student"]["top1"]
    agreement = result.metrics["agreement"]["top1"]
    assert untrained_top1 < 0.25 and teacher_top1 > 0.6
    assert student_top1 > untrained_top1 + 0.25, (student_top1, untrained_top1)
    assert agreement > 0.4, agreement
    assert not near_chance(agreement, result.metrics["agreement"]["constant_guess"])
    assert result.metrics["train"]["param_checksum"]["initial"] != result.metrics["train"]["param_checksum"]["final"][0]


def test_a_student_that_has_not_learned_is_called_out(tmp_path: Path, fitted: FixtureRun, digit_pool: Path) -> None:
    """One step at a vanishing learning rate leaves the student its random self: the summary says so."""
    args = ["distill", "-t", str(fitted.teacher), "-u", str(digit_pool), "--val", str(fitted.val)]
    sets = [arg for item in (*LEARN, "train.steps=1", "train.lr=1e-9") for arg in ("--set", item)]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "run"), *sets], terminal_width=200)
    assert result.exit_code == 0, result.output
    agreement = json.loads((tmp_path / "run" / "metrics.json").read_text())["agreement"]
    assert 0 < agreement["constant_guess"] < 0.5 and near_chance(agreement["top1"], agreement["constant_guess"])
    assert "barely learned" in result.output and "--student-weights" in result.output


def _top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: InputSpec) -> float:
    return float((predict_logits(model, images, spec, torch.device("cpu")).argmax(1) == labels).float().mean())


class _Logits(torch.nn.Module):
    def __init__(self, teacher: TeacherModel) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.predict(x)[0]


# ----------------------------------------------------------------------------- the loss mix, wired per method


def _batch() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(3)
    teacher_logits = torch.randn(6, 5, generator=generator) * 3
    teacher_logits[:, 0] += 6  # confident teacher: at τ = 1 one class holds > 90% of the mass
    student_logits = torch.randn(6, 5, generator=generator)
    student_embedding = torch.randn(6, 8, generator=generator)
    projected = torch.randn(6, 12, generator=generator)
    teacher_embedding = torch.randn(6, 12, generator=generator)
    return student_logits, student_embedding, projected, teacher_logits, teacher_embedding


@pytest.mark.parametrize("method", ["eikd", "random"])
def test_eikd_loss_mix_applies_the_tau_softened_class_drop_mask(method: str) -> None:
    """L = τ²·KL(p̃_T ‖ p_S) over the kept classes + α·L_feat + β·L_rel, the mask taken at τ with ≥ 2 classes;
    L_rel is ODSD's denoised contrastive relation by default."""
    s_logits, s_embed, projected, t_logits, t_embed = _batch()
    recipe = load_recipe(None, [f"method={method}", "loss.class_drop.mass=0.5", "loss.relation.weight=0.5"])
    terms = distillation_loss(_Net(), recipe, s_logits, s_embed, projected, t_logits, t_embed)
    mask = kept_class_mask(t_logits, None, 0.5, temperature=4.0, min_classes=2)
    assert int(mask.sum(1).min()) >= 2 and bool((mask.sum(1) < 5).any())  # the mask drops something here
    kd = class_drop_kd(s_logits, t_logits, 4.0, mask, mask_student=False)
    expected = (
        kd + feature_loss(projected, t_embed) + 0.5 * contrastive_relation_loss(projected, t_embed, t_logits, 0.1)
    )
    assert float(terms.total) == pytest.approx(float(expected), rel=1e-5)
    assert terms.parts["kd"] == pytest.approx(float(kd), rel=1e-5)
    unmasked = class_drop_kd(s_logits, t_logits, 4.0, None)
    assert abs(terms.parts["kd"] - float(unmasked)) > 1e-3  # a skipped mask would be visible


def test_kd_loss_is_plain_hinton_kd() -> None:
    s_logits, s_embed, projected, t_logits, t_embed = _batch()
    terms = distillation_loss(_Net(), load_recipe(None, ["method=kd"]), s_logits, s_embed, projected, t_logits, t_embed)
    assert set(terms.parts) == {"kd"}
    assert float(terms.total) == pytest.approx(float(class_drop_kd(s_logits, t_logits, 4.0, None)), rel=1e-6)


def test_dfnd_loss_is_kd_plus_noise_adaptation() -> None:
    s_logits, s_embed, projected, t_logits, t_embed = _batch()
    net = _Net(NoiseAdaptation(5))
    terms = distillation_loss(net, load_recipe(None, ["method=dfnd"]), s_logits, s_embed, projected, t_logits, t_embed)
    expected = class_drop_kd(s_logits, t_logits, 4.0, None) + net.noise(s_logits, t_logits)
    assert set(terms.parts) == {"kd", "noise"}
    assert float(terms.total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


class _Net(torch.nn.Module):
    def __init__(self, noise: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.noise = noise


# ----------------------------------------------------------------------------- DDP trains one model


def test_two_ddp_ranks_end_with_identical_trained_weights(tmp_path: Path, fitted: FixtureRun, digit_pool: Path) -> None:
    """torchrun with 2 CPU processes: both ranks hold the same weights after training, and they moved."""
    env = {**os.environ, "EIKD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    sets = [arg for item in [*LEARN[:-1], "train.steps=12"] for arg in ("--set", item)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "eikd_edge", "distill", "-t", str(fitted.teacher), "-u", str(digit_pool), *sets,
               "-o", str(out)]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    checksum = json.loads((out / "metrics.json").read_text())["train"]["param_checksum"]
    assert len(checksum["final"]) == 2 and checksum["final"][0] == checksum["final"][1]
    assert checksum["final"][0] != checksum["initial"]
    assert load_student(out / "student.pt").model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
