"""`eikd-edge select`, `distill` and `quickstart`: the EIKD stages from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eikd_edge.commands.options import (
    Classes,
    InputSize,
    Mean,
    Std,
    TeacherArch,
    TeacherPath,
    TrustPickle,
    spec_overrides,
)
from eikd_edge.commands.summary import print_distill_summary, print_selection_summary
from eikd_edge.config import load_recipe
from eikd_edge.console import console
from eikd_edge.distill import DistillInputs, distill, run_selection
from eikd_edge.errors import EikdError
from eikd_edge.run import RunPaths

Unlabeled = Annotated[Path, typer.Option("--unlabeled", "-u", help="Folder of unlabeled field images (recursive).")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")]
RecipeFile = Annotated[Path | None, typer.Option("--recipe", help="Recipe YAML (see recipes/).")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe setting: key=value, repeatable.")]


def select_command(
    teacher: TeacherPath,
    unlabeled: Unlabeled,
    out: Out = Path("runs/select"),
    recipe: RecipeFile = None,
    overrides: Overrides = None,
    teacher_arch: TeacherArch = None,
    trust_pickle: TrustPickle = False,
    input_size: InputSize = None,
    mean: Mean = None,
    std: Std = None,
    classes: Classes = None,
) -> None:
    """Score the field images with the teacher and show what it finds (writes selection.json)."""
    settings = load_recipe(recipe, overrides)
    inputs = DistillInputs(
        teacher, unlabeled, None, teacher_arch, trust_pickle, spec_overrides(input_size, mean, std, classes)
    )
    out.mkdir(parents=True, exist_ok=True)
    _, selection = run_selection(inputs, settings, out)
    print_selection_summary(selection, RunPaths(out))


def distill_command(
    teacher: TeacherPath,
    unlabeled: Unlabeled,
    out: Out = Path("runs/exp1"),
    student: Annotated[str | None, typer.Option("--student", help="Student architecture (`eikd-edge models`).")] = None,
    val: Annotated[Path | None, typer.Option("--val", help="Labeled ImageFolder for true top-1.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="eikd | kd | random | dfnd")] = None,
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
) -> None:
    """Select useful field images with the teacher and distil a compact student (EIKD)."""
    extra = list(overrides or [])
    if student:
        extra.append(f"student.arch={student}")
    if method:
        extra.append(f"method={method}")
    settings = load_recipe(recipe, extra)
    inputs = DistillInputs(
        teacher, unlabeled, val, teacher_arch, trust_pickle, spec_overrides(input_size, mean, std, classes)
    )
    result = distill(inputs, settings, out, resume=resume, overwrite=overwrite)
    if result.is_main:
        print_distill_summary(result)


def quickstart(
    out: Out = Path("runs/quickstart"),
    example: Annotated[
        Path | None, typer.Option("--example", help="Example folder (default: the bundled one).")
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Select + distil on the bundled digits example (a few minutes on a laptop CPU)."""
    folder = example or bundled_example()
    run = RunPaths(out)
    if out.exists() and any(out.iterdir()) and not run.recipe.exists():
        raise EikdError(f"{out} exists and is not an eikd-edge run folder; pick another --out")
    recipe_file = folder / "recipe.yaml"
    settings = load_recipe(recipe_file if recipe_file.is_file() else None, overrides)
    inputs = DistillInputs(folder / "teacher.pt", folder / "field", folder / "val")
    result = distill(inputs, settings, out, overwrite=True)
    print_distill_summary(result)
    console.print(f"next: eikd-edge export {out} --onnx --int8   then   eikd-edge validate {out}")


def bundled_example() -> Path:
    """examples/digits in the source checkout the package runs from."""
    folder = Path(__file__).resolve().parents[2] / "examples" / "digits"
    if not (folder / "teacher.pt").is_file():
        raise EikdError("the bundled example (examples/digits) is not here; run from a clone of the repository")
    return folder


def register(app: typer.Typer) -> None:
    app.command("select")(select_command)
    app.command("distill")(distill_command)
    app.command("quickstart")(quickstart)
