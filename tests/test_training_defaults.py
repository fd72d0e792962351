"""The training defaults and recipe rules of the distillation engine: class-dropping on the τ-softened teacher,
the step budget that follows the pool, the wall-clock budget, function-matching mixes, DFND's noise matrix kept out
of weight decay, and options a method would silently ignore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.config import Recipe, load_recipe, parse_duration
from eikd_edge.data import normalize
from eikd_edge.distill.losses import NoiseAdaptation, kept_class_mask
from eikd_edge.distill.step import (
    MAX_CHECKS,
    MIN_DEFAULT_STEPS,
    DistillNet,
    augment,
    build_optimizer,
    default_epochs,
    mix_images,
    passes_per_check,
    recalibrate_batchnorm,
    steps_within_budget,
    uses_flip,
    uses_resized_crop,
)
from eikd_edge.errors import EikdError
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.zoo import build_model

runner = CliRunner()


def test_defaults_run_the_teacher_on_the_students_view_and_keep_two_classes() -> None:
    recipe = Recipe()
    assert recipe.train.teacher_targets == "online" and recipe.train.mix == "none"
    assert recipe.loss.class_drop.min_classes == 2 and recipe.train.epochs is None


def test_class_mask_is_taken_on_the_tau_softened_distribution() -> None:
    """Logits [6, 2, 0, -4]: at τ = 1 the top class holds 98% (one class reaches 0.9); at τ = 4 the softened
    distribution is [0.47, 0.17, 0.10, 0.04...] and reaching 0.9 takes the first three classes."""
    logits = torch.tensor([[6.0, 2.0, 0.0, -4.0]])
    assert kept_class_mask(logits, mass=0.9).tolist() == [[True, False, False, False]]
    probs = (logits / 4).softmax(1)[0]
    assert float(probs[:2].sum()) < 0.9 < float(probs[:3].sum())
    assert kept_class_mask(logits, mass=0.9, temperature=4.0).tolist() == [[True, True, True, False]]


def test_class_mask_never_keeps_fewer_than_min_classes() -> None:
    logits = torch.tensor([[30.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 25.0]])
    assert kept_class_mask(logits, mass=0.5, temperature=4.0, min_classes=1).sum(1).tolist() == [1, 1]
    mask = kept_class_mask(logits, mass=0.5, temperature=4.0, min_classes=2)
    assert mask.tolist() == [[True, True, False, False], [True, False, False, True]]


def test_default_budget_grows_small_pools_to_a_minimum_step_count() -> None:
    assert default_epochs(1080, 64) * (1080 // 64) >= MIN_DEFAULT_STEPS
    assert default_epochs(1_000_000, 64) == 30  # a large pool: thirty passes, not a fixed step count


def test_small_pools_check_after_several_passes_not_after_every_step() -> None:
    assert passes_per_check(steps_per_epoch=16, total_steps=512) == 1  # 32 passes: one check per pass
    assert passes_per_check(steps_per_epoch=1, total_steps=500) == 13  # 500 one-step passes: 39 checks, not 500
    for steps_per_epoch, total in ((1, 500), (2, 1000), (3, 121), (40, 1200), (7, 7)):
        per_check = passes_per_check(steps_per_epoch, total)
        assert -(-total // (steps_per_epoch * per_check)) <= MAX_CHECKS


def test_a_small_pool_run_trains_every_step_and_checks_at_most_max_checks_times(
    tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    out = tmp_path / "r"
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(out), "--epochs", "100"]
    for item in ("train.batch_size=16", "student.width=0.5", "selection.batch_size=64", "train.keep=last"):
        args += ["--set", item]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    passes = [h["epoch"] for h in metrics["history"]]
    steps_per_pass = metrics["train"]["steps"] // 100
    assert steps_per_pass >= 1 and metrics["train"]["steps"] == 100 * steps_per_pass  # no step lost to the cadence
    assert passes == [*range(3, 100, 3), 100]  # a check every third pass, and one at the end
    assert metrics["train"]["epochs"] == 100 and metrics["train"]["checks"] == len(passes) <= MAX_CHECKS
    assert [h["step"] for h in metrics["history"]] == [p * steps_per_pass for p in passes]
    assert metrics["student"]["kept_epoch"] == 100


def test_wall_clock_budget_turns_into_steps_at_the_measured_pace() -> None:
    assert (
        parse_duration(45) == 45
        and parse_duration("90s") == 90
        and parse_duration("10m") == 600
        and parse_duration("1.5h") == 5400
    )
    assert steps_within_budget(60.0, elapsed_s=6.0, steps_done=30) == 300
    assert steps_within_budget(1.0, elapsed_s=6.0, steps_done=30) == 30  # never fewer than already done
    for bad in ("10x", "-5m", "inf", "0s"):
        with pytest.raises(EikdError, match="budget"):
            load_recipe(None, [f"train.budget={bad}"])


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixes_combine_two_images_of_the_batch(mode: str) -> None:
    x = torch.stack([torch.full((3, 16, 16), 10.0 * (i + 1)) for i in range(4)])
    mixed = mix_images(x, mode, 1.0, torch.Generator().manual_seed(1))
    assert mixed.shape == x.shape and not torch.equal(mixed, x)
    for i in range(4):  # every pixel comes from the image itself or its one partner (cutmix) / a blend (mixup)
        values = set(mixed[i].unique().tolist())
        assert len(values) <= 2 if mode == "cutmix" else len(values) == 1
        assert min(values) >= 10.0 - 1e-4 and max(values) <= 40.0 + 1e-4


def test_mixing_needs_online_teacher_targets() -> None:
    with pytest.raises(EikdError, match="teacher_targets=online"):
        load_recipe(None, ["train.mix=mixup", "train.teacher_targets=cached"])
    assert load_recipe(None, ["train.teacher_targets=cached"]).train.mix == "none"  # the default mix steps aside


def test_dfnd_noise_transition_gets_no_weight_decay() -> None:
    net = DistillNet(build_model("cifar_resnet8", 10, width=0.5), 10, 32, False, True)
    optimizer = build_optimizer(net, load_recipe(None, ["method=dfnd"]).train)
    noise = {id(p) for p in net.noise.parameters()}
    decays = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert all(decays[i] == 0.0 for i in noise)
    assert all(d == 5e-4 for i, d in decays.items() if i not in noise)
    assert len(decays) == sum(1 for p in net.parameters() if p.requires_grad)


def test_noise_transition_stays_put_under_the_optimizer_without_gradient() -> None:
    """With no gradient on Q, weight decay alone would shrink its logits toward uniform; it must not move."""
    net = DistillNet(build_model("cifar_resnet8", 10, width=0.5), 10, 32, False, True)
    assert isinstance(net.noise, NoiseAdaptation)
    optimizer = build_optimizer(net, load_recipe(None, ["method=dfnd", "train.weight_decay=0.1"]).train)
    before = net.noise.logits.detach().clone()
    net.noise.logits.grad = torch.zeros_like(before)
    optimizer.step()
    assert torch.equal(net.noise.logits.detach(), before)


@pytest.mark.parametrize(
    ("method", "setting", "name"),
    [
        ("kd", "selection.sampler=top", "selection.sampler"),
        ("kd", "selection.keep_fraction=0.3", "selection.keep_fraction"),
        ("kd", "loss.feature.enabled=false", "loss.feature"),
        ("dfnd", "loss.class_drop.mass=0.5", "loss.class_drop"),
        ("dfnd", "selection.score=energy", "selection.score"),
        ("random", "selection.sampler=top", "selection.sampler"),
    ],
)
def test_options_the_method_ignores_are_refused_in_one_line(
    tmp_path: Path, script_teacher: Path, digit_images: Path, method: str, setting: str, name: str
) -> None:
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(tmp_path / "r"),
            "--method", method, "--set", setting]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert f"method {method} ignores {name}" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_the_select_flag_with_kd_is_refused(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(tmp_path / "r"),
            "--method", "kd", "--select", "top"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "ignores selection.sampler" in result.output


def test_large_inputs_get_random_resized_crops_small_ones_pad_crops() -> None:
    """A horizontal ramp (value = column) at 96 px: each crop is a zoomed, unflipped window, so every row still
    rises left to right, spans at least the narrowest allowed box and differs between images; 32 px pad-crops."""
    config = load_recipe(None, []).train.augment.model_copy(update={"jitter": 0.0, "flip": False})
    ramp = torch.arange(96, dtype=torch.float32).expand(8, 3, 96, 96).contiguous()
    out = augment(ramp.to(torch.uint8), config, torch.Generator().manual_seed(0))
    assert out.shape == ramp.shape
    assert bool((out[..., 1:] - out[..., :-1] >= -1e-3).all())  # rows rise: a crop, not a shuffle or flip
    spans = out[:, 0, 48, -1] - out[:, 0, 48, 0]
    assert float(spans.min()) >= 0.5 * 95 - 2 and float(spans.max()) <= 95 + 1e-3
    assert len({round(float(s), 2) for s in spans}) > 1  # one box per image
    assert uses_resized_crop(config, (96, 96)) and not uses_resized_crop(config, (32, 32))
    small = augment(ramp[:, :, :32, :32].to(torch.uint8), config, torch.Generator().manual_seed(0))
    assert set((small[:, 0, 16, 16] - 16).tolist()) <= {-2.0, -1.0, 0.0, 1.0, 2.0}  # a pad-crop shift only


def test_large_inputs_are_flipped_by_default_small_ones_never() -> None:
    """flip: auto. A horizontal ramp with crops and jitter off: at 96 px some images come out mirrored and the others
    untouched; at 32 px (digits, glyphs, where a mirror changes the class) none is mirrored."""
    config = load_recipe(None, []).train.augment.model_copy(update={"jitter": 0.0, "crop": "pad", "crop_pad": 0})
    assert config.flip == "auto" and uses_flip(config, (96, 96)) and not uses_flip(config, (32, 32))
    for size, flipped_expected in ((96, True), (32, False)):
        ramp = torch.arange(size, dtype=torch.float32).expand(16, 3, size, size).contiguous()
        out = augment(ramp.to(torch.uint8), config, torch.Generator().manual_seed(0))
        mirrored = [bool(torch.equal(o, ramp[0].flip(-1))) for o in out]
        assert all(m or torch.equal(o, ramp[0]) for m, o in zip(mirrored, out, strict=True))
        assert any(mirrored) is flipped_expected and (not flipped_expected or not all(mirrored)), (size, mirrored)


def test_precise_batchnorm_makes_eval_outputs_match_what_the_student_learned() -> None:
    """torchvision-style BatchNorm momentum 0.01 after a few steps: the running statistics still describe the
    initial weights, eval-mode logits are far from the train-mode ones; re-estimating them closes the gap."""
    torch.manual_seed(0)
    model = build_model("cifar_resnet8", 10, width=0.5)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.01
    spec = InputSpec((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))
    images = (torch.rand(256, 3, 32, 32) * 255).to(torch.uint8)
    x = normalize(images.float(), spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):  # large steps: the weights move, the slow running averages do not follow
        loss = model(x[:64]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def gap() -> float:
        with torch.no_grad():
            model.train()
            learned = model(x)
            model.eval()
            return float((model(x) - learned).abs().mean() / learned.abs().mean().clamp_min(1e-6))

    before = gap()
    recalibrate_batchnorm(model, images, spec, count=256)
    after = gap()
    assert before > 0.5 and after < 0.05, (before, after)
    assert all(m.momentum == 0.01 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_a_selection_score_under_the_odsd_sampler_is_refused(
    tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    """ODSD samples by closeness: a score setting would be silently ignored, so it is refused instead."""
    args = ["distill", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(tmp_path / "r"),
            "--set", "selection.score=energy"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "selection.score is read by selection.sampler=top only" in result.output
    assert not (tmp_path / "r").exists()
    assert load_recipe(None, ["selection.sampler=top", "selection.score=energy"]).selection.score == "energy"
