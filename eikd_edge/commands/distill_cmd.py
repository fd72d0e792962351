"""`eikd-edge distill` and `quickstart`: distillation from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eikd_edge.commands.options import (
    DEFAULT_SAMPLER as DEFAULT_SAMPLER,  # shown by --help; the recipe default, shared with select
)
from eikd_edge.commands.options import (
    CacheDir,
    Classes,
    Device,
    InputSize,
    MaybeUnlabeled,
    Mean,
    Out,
    Overrides,
    RecipeFile,
    Resize,
    Sampler,
    Std,
    TeacherArch,
    TeacherPath,
    TrainThreads,
    TrustPickle,
    resolve_cache_dir,
    spec_overrides,
    torch_threads,
)
from eikd_edge.console import print_command
from eikd_edge.distill.methods import METHODS
from eikd_edge.errors import EikdError

# Defaults that come from the recipe, as `--help` shows them (tests/test_help.py checks them against Recipe()).
DEFAULT_METHOD = "eikd"
DEFAULT_RELATION = "contrastive"
DEFAULT_CURRICULUM = "none"
DEFAULT_STUDENT = "cifar_resnet8"


def distill_command(
    teacher: TeacherPath,
    unlabeled: MaybeUnlabeled = None,
    out: Out = Path("runs/exp1"),
    student: Annotated[
        str | None,
        typer.Option(
            "--student", metavar="ARCH", help="Student architecture (`eikd-edge models`).", show_default=DEFAULT_STUDENT
        ),
    ] = None,
    val: Annotated[Path | None, typer.Option("--val", help="Labeled ImageFolder for true top-1.")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            metavar="|".join(METHODS),
            help="The distillation method (docs/methods.md).",
            show_default=DEFAULT_METHOD,
        ),
    ] = None,
    sampler: Sampler = None,
    relation: Annotated[
        str | None,
        typer.Option(
            "--relation",
            metavar="contrastive|kl",
            help="contrastive: ODSD denoised | kl: EIKD relation matrix.",
            show_default=DEFAULT_RELATION,
        ),
    ] = None,
    curriculum: Annotated[
        str | None,
        typer.Option(
            "--curriculum",
            metavar="none|selfpaced",
            help="none | selfpaced: CuDFKD easy-to-hard sample weights.",
            show_default=DEFAULT_CURRICULUM,
        ),
    ] = None,
    synthesize_count: Annotated[
        int | None,
        typer.Option(
            "--synthesize",
            min=0,
            metavar="N",
            help="Synthesise N images from the teacher and add them to the pool.",
            show_default="0",
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            min=1,
            metavar="N",
            help="Passes over the training images.",
            show_default="30, at least 500 steps",
        ),
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget", metavar="TIME", help="Wall-clock training budget, e.g. 90s, 10m, 2h (sets the step count)."
        ),
    ] = None,
    device: Device = None,
    recipe: RecipeFile = None,
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out.")] = False,
    teacher_arch: TeacherArch = None,
    trust_pickle: TrustPickle = False,
    input_size: InputSize = None,
    mean: Mean = None,
    std: Std = None,
    classes: Classes = None,
    resize: Resize = None,
    student_weights: Annotated[
        str | None,
        typer.Option(
            "--student-weights",
            metavar="FILE|imagenet",
            help="Start the student from a torchvision-format state_dict (classifier re-initialised), or from "
            "torchvision's weights when they are in the local torch cache (imagenet, DEFAULT, IMAGENET1K_V1...).",
            show_default="random init",
        ),
    ] = None,
    keep_state: Annotated[
        bool,
        typer.Option("--keep-state", help="Keep train_state.pt (optimizer state) when the run finishes."),
    ] = False,
    threads: TrainThreads = None,
    cache_dir: CacheDir = None,
) -> None:
    """Select useful field images with the teacher and distil a compact student (EIKD)."""
    from eikd_edge.commands.summary import print_distill_summary
    from eikd_edge.config import load_recipe
    from eikd_edge.distill import DistillInputs, distill

    extra = list(overrides or [])
    if student:
        extra.append(f"student.arch={student}")
    for key, value in (
        ("method", method),
        ("selection.sampler", sampler),
        ("loss.relation.kind", relation),
        ("train.curriculum.mode", curriculum),
        ("synthesis.count", synthesize_count),
        ("train.epochs", epochs),
        ("train.budget", budget),
        ("train.device", device),
    ):
        if value is not None:
            extra.append(f"{key}={value}")
    settings = load_recipe(recipe, extra)
    if student_weights is not None:  # assigned, not --set: a file name must stay a string (e.g. 2024.pt)
        weights = Path(student_weights).expanduser()
        settings.student.weights = str(weights.resolve()) if weights.exists() else student_weights
    spec = spec_overrides(input_size, mean, std, classes, resize)
    shared = resolve_cache_dir(cache_dir)
    with torch_threads(threads) as workers:
        inputs = DistillInputs(teacher, unlabeled, val, teacher_arch, trust_pickle, spec, workers, shared)
        result = distill(inputs, settings, out, resume=resume, overwrite=overwrite, keep_state=keep_state)
    if result.is_main:
        print_distill_summary(result)
        print_next(out)


def quickstart(
    out: Out = Path("runs/quickstart"),
    example: Annotated[
        Path | None, typer.Option("--example", help="Example folder (default: the bundled one).")
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Select + distil on the bundled digits example (about 2 minutes on a 2-core CPU)."""
    from eikd_edge.commands.summary import print_distill_summary
    from eikd_edge.config import load_recipe
    from eikd_edge.distill import DistillInputs, distill

    folder = example or bundled_example()
    recipe_file = folder / "recipe.yaml"
    settings = load_recipe(recipe_file if recipe_file.is_file() else None, overrides)
    inputs = DistillInputs(folder / "teacher.pt", folder / "field", folder / "val")
    result = distill(inputs, settings, out, overwrite=True)
    print_distill_summary(result)
    print_next(out)


def print_next(out: Path) -> None:
    """What to run after a distillation: distill and quickstart end with the same lines."""
    print_command("next:", f"eikd-edge export {out} --onnx --int8")
    print_command("then:", f"eikd-edge validate {out}")


def bundled_example() -> Path:
    """examples/digits in the source checkout the package runs from. The 3,300 example images stay out of the
    wheel (one copy, in the repository); an installed package points at a clone or --example."""
    folder = Path(__file__).resolve().parents[2] / "examples" / "digits"
    if not (folder / "teacher.pt").is_file():
        raise EikdError(
            "the bundled example (examples/digits) ships with the repository, not the installed package: "
            "clone it and pass --example CLONE/examples/digits"
        )
    return folder


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_command)
    app.command("quickstart")(quickstart)
