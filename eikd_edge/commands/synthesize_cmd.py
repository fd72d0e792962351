"""`eikd-edge synthesize`: images made from the teacher alone, for when field data is scarce or absent."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from eikd_edge.commands.options import (
    Classes,
    Device,
    InputSize,
    Mean,
    Overrides,
    Std,
    TeacherArch,
    TeacherPath,
    TrustPickle,
    spec_overrides,
)
from eikd_edge.console import console, print_command

if TYPE_CHECKING:
    from eikd_edge.config import Recipe

DEFAULT_STEPS = 200  # SynthesisConfig's defaults, as --help shows them (tests/test_help.py compares them)
DEFAULT_BATCH_SIZE = 128


# The synthesize command's own options (the shared ones are in options.py).
Count = Annotated[int, typer.Option("--count", "-n", min=1, help="Number of images to synthesise.")]
OutFolder = Annotated[Path, typer.Option("--out", "-o", help="Folder to write the images and synthesis.json to.")]
Steps = Annotated[
    int | None,
    typer.Option("--steps", min=1, help="Adam steps per batch.", show_default=str(DEFAULT_STEPS)),
]
BatchSize = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Images optimised together.", show_default=str(DEFAULT_BATCH_SIZE)),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for targets and starting noise.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an earlier synthesis in --out.")]


def synthesize_command(
    teacher: TeacherPath,
    count: Count,
    out: OutFolder = Path("synthetic"),
    steps: Steps = None,
    batch_size: BatchSize = None,
    device: Device = None,
    seed: Seed = 0,
    overrides: Overrides = None,
    overwrite: Overwrite = False,
    teacher_arch: TeacherArch = None,
    trust_pickle: TrustPickle = False,
    input_size: InputSize = None,
    mean: Mean = None,
    std: Std = None,
    classes: Classes = None,
) -> None:
    """Synthesise a transfer set from the teacher alone (soft-targeted synthesis, Z. Wang, AAAI 2021)."""
    from eikd_edge.devices import resolve_device
    from eikd_edge.distill import DistillInputs, load_inputs_teacher
    from eikd_edge.runfolder import is_run_folder, writing_run
    from eikd_edge.synthesis import check_output_folder, synthesize
    from eikd_edge.ui import progress_bar, show_progress

    recipe = _synthesis_recipe(overrides, seed, device, steps, batch_size)
    owner = out.parent if is_run_folder(out.parent) else None  # writing into a run (RUN/synthetic): lock that run
    with writing_run(owner, "synthesize") if owner else nullcontext():
        check_output_folder(out, overwrite)
        inputs = DistillInputs(
            teacher, None, None, teacher_arch, trust_pickle, spec_overrides(input_size, mean, std, classes)
        )
        model = load_inputs_teacher(inputs)
        target = resolve_device(recipe.train.device)
        with progress_bar(disable=not show_progress()) as bar:
            result = synthesize(model, count, recipe.synthesis, out, target, bar)
    if result.reused:
        console.print(escape(f"{out} already holds these {result.count} images (same teacher and settings): kept"))
        return
    prior = "on" if result.bn_prior else "off (no BatchNorm layers visible: name the architecture with --teacher-arch)"
    console.print(
        f"wrote {result.count} images to {escape(str(out))} in {result.seconds:.1f} s on {target}; the teacher puts "
        f"{100 * result.fit:.1f}% of them in their target class; BatchNorm prior {prior}"
    )
    print_command("next:", f"eikd-edge distill --teacher {teacher} --unlabeled {out} -o RUN")
    console.print("(or let distill synthesise them itself: distill --synthesize N)", highlight=False)


def _synthesis_recipe(
    overrides: list[str] | None, seed: int, device: str | None, steps: int | None, batch_size: int | None
) -> Recipe:
    """The default recipe with --set, then the command's own flags, applied."""
    from eikd_edge.config import load_recipe

    extra = [*(overrides or []), f"synthesis.seed={seed}", f"train.device={device or 'auto'}"]
    if steps:
        extra.append(f"synthesis.steps={steps}")
    if batch_size:
        extra.append(f"synthesis.batch_size={batch_size}")
    return load_recipe(None, extra)


def register(app: typer.Typer) -> None:
    app.command("synthesize")(synthesize_command)
