"""`eikd-edge distill` and `quickstart`: distillation from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from eikd_edge.config import Recipe

# Defaults that come from the recipe, as `--help` shows them (tests/test_help.py checks them against Recipe()).
DEFAULT_METHOD = "eikd"
DEFAULT_RELATION = "contrastive"
DEFAULT_CURRICULUM = "none"
DEFAULT_STUDENT = "cifar_resnet8"


# The distill command's own options (the shared ones are in options.py).
StudentArch = Annotated[
    str | None,
    typer.Option(
        "--student", metavar="ARCH", help="Student architecture (`eikd-edge models`).", show_default=DEFAULT_STUDENT
    ),
]
ValFolder = Annotated[Path | None, typer.Option("--val", help="Labeled ImageFolder for true top-1.")]
MethodName = Annotated[
    str | None,
    typer.Option(
        "--method",
        metavar="|".join(METHODS),
        help="The distillation method (docs/methods.md).",
        show_default=DEFAULT_METHOD,
    ),
]
RelationKind = Annotated[
    str | None,
    typer.Option(
        "--relation",
        metavar="contrastive|kl",
        help="contrastive: ODSD denoised | kl: EIKD relation matrix.",
        show_default=DEFAULT_RELATION,
    ),
]
CurriculumMode = Annotated[
    str | None,
    typer.Option(
        "--curriculum",
        metavar="none|selfpaced",
        help="none | selfpaced: CuDFKD easy-to-hard sample weights.",
        show_default=DEFAULT_CURRICULUM,
    ),
]
SynthesizeCount = Annotated[
    int | None,
    typer.Option(
        "--synthesize",
        min=0,
        metavar="N",
        help="Synthesise N images from the teacher and add them to the pool.",
        show_default="0",
    ),
]
Epochs = Annotated[
    int | None,
    typer.Option(
        "--epochs",
        min=1,
        metavar="N",
        help="Passes over the training images.",
        show_default="30, at least 500 steps",
    ),
]
Budget = Annotated[
    str | None,
    typer.Option(
        "--budget", metavar="TIME", help="Wall-clock training budget, e.g. 90s, 10m, 2h (sets the step count)."
    ),
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last checkpoint.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out.")]
StudentWeights = Annotated[
    str | None,
    typer.Option(
        "--student-weights",
        metavar="FILE|imagenet",
        help="Start the student from a torchvision-format state_dict (classifier re-initialised), or from "
        "torchvision's weights when they are in the local torch cache (imagenet, DEFAULT, IMAGENET1K_V1...).",
        show_default="random init",
    ),
]
KeepState = Annotated[
    bool,
    typer.Option("--keep-state", help="Keep train_state.pt (optimizer state) when the run finishes."),
]


def distill_command(
    teacher: TeacherPath,
    unlabeled: MaybeUnlabeled = None,
    out: Out = Path("runs/exp1"),
    student: StudentArch = None,
    val: ValFolder = None,
    method: MethodName = None,
    sampler: Sampler = None,
    relation: RelationKind = None,
    curriculum: CurriculumMode = None,
    synthesize_count: SynthesizeCount = None,
    epochs: Epochs = None,
    budget: Budget = None,
    device: Device = None,
    recipe: RecipeFile = None,
    overrides: Overrides = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    teacher_arch: TeacherArch = None,
    trust_pickle: TrustPickle = False,
    input_size: InputSize = None,
    mean: Mean = None,
    std: Std = None,
    classes: Classes = None,
    resize: Resize = None,
    student_weights: StudentWeights = None,
    keep_state: KeepState = False,
    threads: TrainThreads = None,
    cache_dir: CacheDir = None,
) -> None:
    """Select useful field images with the teacher and distil a compact student (EIKD)."""
    from eikd_edge.commands.summary import print_distill_summary
    from eikd_edge.distill import DistillInputs, distill

    flags = (method, sampler, relation, curriculum, synthesize_count, epochs, budget, device)
    settings = _distill_recipe(recipe, overrides, student, student_weights, flags)
    spec = spec_overrides(input_size, mean, std, classes, resize)
    shared = resolve_cache_dir(cache_dir)
    with torch_threads(threads) as workers:
        inputs = DistillInputs(teacher, unlabeled, val, teacher_arch, trust_pickle, spec, workers, shared)
        result = distill(inputs, settings, out, resume=resume, overwrite=overwrite, keep_state=keep_state)
    if result.is_main:
        print_distill_summary(result)
        print_next(out)


# The recipe settings the flags after --student set, in distill_command's `flags` order.
FLAG_SETTINGS = (
    "method",
    "selection.sampler",
    "loss.relation.kind",
    "train.curriculum.mode",
    "synthesis.count",
    "train.epochs",
    "train.budget",
    "train.device",
)


def _distill_recipe(
    recipe: Path | None,
    overrides: list[str] | None,
    student: str | None,
    student_weights: str | None,
    flags: tuple[object, ...],
) -> Recipe:
    """The recipe file (or the defaults) with --set, then --student and the other flags given, applied."""
    from eikd_edge.config import load_recipe

    extra = list(overrides or [])
    if student:
        extra.append(f"student.arch={student}")
    for key, value in zip(FLAG_SETTINGS, flags, strict=True):
        if value is not None:
            extra.append(f"{key}={value}")
    settings = load_recipe(recipe, extra)
    if student_weights is not None:  # assigned, not --set: a file name must stay a string (e.g. 2024.pt)
        weights = Path(student_weights).expanduser()
        settings.student.weights = str(weights.resolve()) if weights.exists() else student_weights
    return settings


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
