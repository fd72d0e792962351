"""Recipes: every training setting, validated by pydantic (unknown keys rejected with the nearest valid name)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eikd_edge.distill.methods import METHODS, SETTINGS
from eikd_edge.errors import EikdError
from eikd_edge.recipe_errors import explain
from eikd_edge.safe_yaml import load_yaml_text

Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]  # the registry's names, in its order
MAX_SEED = 2**32 - 1  # what every RNG the tool seeds (torch, numpy) accepts, with room for per-epoch offsets
MAX_WIDTH = 8.0  # a student 8x wider than its base is no longer compact; far beyond it allocation itself fails
MAX_CROP_PAD = 64  # pixels; a larger pad makes most random crops mostly padding and costs memory quadratically
MAX_RECIPE_BYTES = 1 << 20
# torch.device strings a recipe may name: auto, cpu, cuda, cuda:N, mps (not "meta": it holds no data)
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


class _Strict(BaseModel):
    """Unknown keys are errors, and no float may be NaN or infinite (`lr: .inf` would train a NaN student)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class StudentConfig(_Strict):
    arch: str = "cifar_resnet8"
    width: float = Field(1.0, gt=0, le=MAX_WIDTH)
    weights: str | None = Field(
        None, description="pretrained start: a state_dict file, or imagenet/DEFAULT from the local torch cache"
    )


class SelectionConfig(_Strict):
    sampler: Literal["top", "odsd"] = Field(
        "odsd", description="odsd: sampled by closeness to the teacher's data (ODSD); top: class-balanced top-scored"
    )
    odsd_temperature: float = Field(
        0.1, gt=0, description="odsd: sampling temperature on the [0, 1] closeness (lower = closer to top-k)"
    )
    score: Literal["confidence", "entropy", "energy", "prototype"] = "confidence"
    keep_fraction: float = Field(0.5, gt=0, le=1)
    balance: bool = True
    dedup_threshold: float | None = Field(None, gt=0, le=1, description="cosine above which near-duplicates go")
    holdout_fraction: float = Field(
        0.1, ge=0, lt=1, description="selected samples held out of training (a diagnostic; flatters selective methods)"
    )
    agreement_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="share of the whole field pool held out of every method's training to measure agreement with "
        "the teacher (fixed by the pool, not the seed; raised towards 200 images on small pools; 0: off)",
    )
    agreement_max: int = Field(1000, ge=0, description="at most this many images in the agreement slice")
    batch_size: int = Field(256, gt=0)


class ClassDropConfig(_Strict):
    enabled: bool = True
    top_k: int | None = Field(None, gt=0, description="keep the k most probable classes (overrides mass)")
    mass: float = Field(
        0.9, gt=0, le=1, description="keep the smallest class set reaching this mass of the τ-softened teacher"
    )
    min_classes: int = Field(2, ge=1, description="never keep fewer classes (the runner-up carries dark knowledge)")
    student: Literal["masked", "full"] = Field(
        "full", description="full: student softmax over every class (measured better); masked: kept classes only"
    )


class WeightedTerm(_Strict):
    enabled: bool = True
    weight: float = Field(1.0, ge=0)


class RelationConfig(WeightedTerm):
    kind: Literal["kl", "contrastive"] = Field(
        "contrastive", description="contrastive: ODSD's denoised contrastive relation; kl: EIKD's relation-matrix KL"
    )
    temperature: float = Field(0.1, gt=0)


class LossConfig(_Strict):
    temperature: float = Field(4.0, gt=0)
    class_drop: ClassDropConfig = ClassDropConfig()
    feature: WeightedTerm = WeightedTerm(weight=1.0)
    relation: RelationConfig = RelationConfig()


class AugmentConfig(_Strict):
    crop: Literal["auto", "pad", "resized"] = Field(
        "auto",
        description="pad: pad-and-random-crop; resized: random-resized-crop; auto: pad up to 64 px, else resized",
    )
    crop_pad: int = Field(2, ge=0, le=MAX_CROP_PAD, description="pad-and-random-crop, in pixels at training resolution")
    crop_scale: float = Field(0.35, gt=0, le=1, description="resized: smallest share of the image area a crop keeps")
    flip: bool | Literal["auto"] = Field(
        "auto",
        description="horizontal flip; auto: on above 64 px (photos), off below (digits, text: a flip changes them)",
    )
    jitter: float = Field(0.1, ge=0, le=1, description="brightness/contrast jitter strength")


class CurriculumConfig(_Strict):
    mode: Literal["none", "selfpaced"] = Field("none", description="selfpaced: CuDFKD easy-to-hard sample weights")
    lambda_start: float = Field(1.0, description="λ at the first step, in units of the batch's mean loss")
    lambda_end: float = Field(10.0, description="λ once the ramp is over (nearly every sample fully weighted)")
    ramp: float = Field(0.5, ge=0, le=1, description="share of the steps over which λ rises")


class SynthesisConfig(_Strict):
    """Soft-targeted transfer-set synthesis (Z. Wang, AAAI 2021): images optimised so the teacher reproduces
    soft targets sampled from a normal model of its feature space."""

    count: int = Field(0, ge=0, description="images to synthesise and add to the pool (0 = none)")
    steps: int = Field(200, gt=0, description="Adam steps per batch of images")
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.1, gt=0)
    target_scale: float = Field(6.0, gt=0, description="mean feature length along the target class direction")
    noise: float = Field(1.0, ge=0, description="feature noise, spread to classes by their similarity")
    bn_weight: float = Field(0.05, ge=0, description="weight of the BatchNorm-statistics prior")
    tv_weight: float = Field(1e-3, ge=0, description="weight of the smoothness (total variation) prior")
    l2_weight: float = Field(1e-4, ge=0, description="weight of the pixel-norm prior")
    seed: int = Field(0, ge=0, le=MAX_SEED)


class TrainConfig(_Strict):
    epochs: int | None = Field(None, gt=0, description="passes over the training images; default: from the pool")
    steps: int | None = Field(None, gt=0, description="optimizer-step budget; overrides epochs when set")
    budget: str | float | None = Field(
        None, description="wall-clock budget for training, e.g. 90s, 10m, 2h, or seconds (overrides both)"
    )
    batch_size: int = Field(64, gt=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    teacher_targets: Literal["cached", "online"] = Field(
        "online", description="online: teacher run on the student's augmented view; cached: the selection pass's"
    )
    mix: Literal["none", "mixup", "cutmix"] = Field(
        "none", description="function matching: mix pairs of field images, the teacher labels the mixed image"
    )
    mix_alpha: float = Field(1.0, gt=0, description="Beta(α, α) for the mixing ratio")
    precise_bn: int = Field(
        1024, ge=0, description="training images that re-estimate BatchNorm statistics before each evaluation (0: off)"
    )
    keep: Literal["best", "last"] = Field(
        "best",
        description="student.pt holds best: the epoch with the highest agreement on the fixed field slice "
        "(label-free), or last: the final epoch",
    )
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="mixed precision: auto = bf16 on GPUs that have it, else fp16; fp32 on CPU"
    )
    augment: AugmentConfig = AugmentConfig()
    curriculum: CurriculumConfig = CurriculumConfig()

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(
                f"train.device: {value!r} is not a device eikd-edge trains on; use auto, cpu, cuda, cuda:N or mps"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _cached_targets_mean_no_default_mix(cls, data: Any) -> Any:
        """Cached targets label the un-augmented image, so the default mix cannot apply: it is switched off
        rather than refused (asking for a mix and cached targets together is still an error)."""
        if isinstance(data, dict) and data.get("teacher_targets") == "cached" and "mix" not in data:
            return {**data, "mix": "none"}
        return data

    @model_validator(mode="after")
    def _mixing_needs_the_teacher_online(self) -> TrainConfig:
        if self.mix != "none" and self.teacher_targets == "cached":
            raise ValueError("train.mix needs train.teacher_targets=online (the teacher must label the mixed image)")
        if self.budget is not None:
            parse_duration(self.budget)
        return self


class Recipe(_Strict):
    method: Method = "eikd"
    student: StudentConfig = StudentConfig()
    selection: SelectionConfig = SelectionConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    synthesis: SynthesisConfig = SynthesisConfig()

    @model_validator(mode="after")
    def _no_settings_the_method_ignores(self) -> Recipe:
        ignored = ignored_settings(self)
        if ignored:
            raise ValueError(f"method {self.method} ignores {', '.join(ignored)}; drop them or use --method eikd")
        default_score = SelectionConfig.model_fields["score"].default
        odsd = METHODS[self.method].samples_by_odsd(self.selection.sampler)
        if odsd and self.selection.score != default_score:
            raise ValueError("selection.score is read by selection.sampler=top only; add --select top to use it")
        return self

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def ignored_settings(recipe: Recipe) -> list[str]:
    """Dotted names of settings changed from their default that `recipe.method` never reads."""
    defaults = Recipe.model_construct().model_dump(mode="json")
    current = recipe.model_dump(mode="json")
    ignored = []
    method = METHODS[recipe.method]
    for dotted in SETTINGS:  # the settings only some methods read (eikd_edge.distill.methods)
        if method.reads(dotted):
            continue
        section, name = dotted.split(".")
        if current[section][name] != defaults[section][name]:
            ignored.append(dotted)
    return ignored


def parse_duration(text: str | float) -> float:
    """'90s', '10m', '1.5h' or a plain number of seconds -> seconds (positive and finite)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    raw = str(text).strip().lower()
    scale = units.get(raw[-1:])
    number = raw[:-1] if scale else raw
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"train.budget {text!r}: expected e.g. 90s, 10m or 2h") from None
    if not 0 < seconds < float("inf"):
        raise ValueError(f"train.budget {text!r}: must be a positive duration")
    return seconds


def load_recipe(path: Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Recipe from YAML (or the defaults), with `a.b=c` overrides applied, validated once at the end."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
        if "inputs" in data and isinstance(data.get("recipe"), dict):  # a run's recipe.resolved.yaml
            data = data["recipe"]
    for item in overrides or []:
        _apply_override(data, item)
    return validate_recipe(data, str(path) if path else "recipe")


def validate_recipe(data: dict[str, Any], source: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise EikdError(f"{source}: {explain(exc, Recipe)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EikdError(f"recipe not found: {path}")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise EikdError(f"recipe {path} is larger than 1 MB; a recipe is a few lines of settings")
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EikdError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise EikdError(f"recipe {path} must be a mapping")
    return data


def _apply_override(data: dict[str, Any], item: str) -> None:
    """`train.lr=0.1`: the value is parsed as a YAML scalar (never evaluated as code)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise EikdError(f"--set {item!r}: expected key=value, e.g. train.lr=0.1")
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise EikdError(f"--set {item!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value
