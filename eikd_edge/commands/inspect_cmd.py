"""`eikd-edge inspect TEACHER`: what a teacher is, what it expects, and proof that it runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from eikd_edge.commands.options import (
    Classes,
    InputSize,
    Mean,
    Resize,
    Std,
    TeacherArch,
    TrustPickle,
    spec_overrides,
)
from eikd_edge.console import console
from eikd_edge.ui import human

if TYPE_CHECKING:
    from eikd_edge.models.teacher import TeacherModel


def inspect(
    teacher: Annotated[
        Path, typer.Argument(metavar="TEACHER", help="Teacher file: TorchScript, .pt2, state_dict, or pickle.")
    ],
    teacher_arch: TeacherArch = None,
    trust_pickle: TrustPickle = False,
    input_size: InputSize = None,
    mean: Mean = None,
    std: Std = None,
    classes: Classes = None,
    resize: Resize = None,
) -> None:
    """Show a teacher's format, input spec and preprocessing, classes, size, embedding width and a forward check."""
    from eikd_edge.models.teacher import load_teacher
    from eikd_edge.preprocess import describe

    model = load_teacher(teacher, teacher_arch, trust_pickle, spec_overrides(input_size, mean, std, classes, resize))
    spec = model.spec
    params = model.num_parameters()
    macs = model.macs()
    table = Table(title=f"Teacher {escape(teacher.name)}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    names = ", ".join(spec.classes[:12]) + (" …" if len(spec.classes) > 12 else "")
    rows = [
        ("format", model.format + (" (deprecated by torch; .pt2 preferred)" if model.format == "torchscript" else "")),
        ("input", f"3x{spec.input_size[0]}x{spec.input_size[1]} RGB"),
        ("preprocess", describe(spec)),
        ("mean / std", f"{_triple(spec.mean)} / {_triple(spec.std)}"),
        ("classes", f"{model.num_classes}: {names}"),
        ("parameters", human(params)),
        ("MACs (batch 1)", human(macs)),
        ("embedding", f"{model.embedding_dim}-d (penultimate)" if model.embedding_dim else "none exposed: logits used"),
        ("BatchNorm stats", _batchnorm_note(model)),
        ("forward check", "ok (finite logits, one row per image)"),
        ("sha256", model.sha256[:16]),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))  # class names come from the sidecar: printed as written
    console.print(table)


def _batchnorm_note(model: TeacherModel) -> str:
    """Whether ODSD's closeness score and synthesis's prior can read the teacher's BatchNorm statistics."""
    from eikd_edge.models.bn_stats import batchnorm_layers

    layers = len(batchnorm_layers(model.module))
    if layers:
        return f"{layers} layers visible (ODSD sampling, synthesis prior)"
    if model.format in ("torchscript", "torch.export"):
        return "hidden by the format: name the architecture (--teacher-arch or arch: in the sidecar)"
    return "none (the teacher has no BatchNorm layers)"


def _triple(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:.3f}" for v in values)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
