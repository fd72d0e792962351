"""Options shared by every command that loads a teacher, so each spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

RunFolder = Annotated[Path, typer.Argument(help="Run folder written by `eikd-edge distill` (and later commands).")]
TeacherPath = Annotated[
    Path, typer.Option("--teacher", "-t", help="Teacher: TorchScript, .pt2, state_dict, or pickle.")
]
TeacherArch = Annotated[
    str | None,
    typer.Option("--teacher-arch", help="Architecture for a state_dict teacher (see `eikd-edge models --all`)."),
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow a teacher whose loading runs code from its file (a pickled nn.Module, a .pt2 with pickled "
        "entries): only for teachers you trust. Never read from a run folder.",
    ),
]
InputSize = Annotated[str | None, typer.Option("--input-size", help="Teacher input size, H or HxW (else sidecar).")]
Mean = Annotated[str | None, typer.Option("--mean", help="Normalisation mean R,G,B (else sidecar / ImageNet).")]
Std = Annotated[str | None, typer.Option("--std", help="Normalisation std R,G,B (else sidecar / ImageNet).")]
Classes = Annotated[str | None, typer.Option("--classes", help="Comma-separated class names (else sidecar).")]


def spec_overrides(input_size: str | None, mean: str | None, std: str | None, classes: str | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {"input_size": input_size, "mean": mean, "std": std}
    if classes:
        overrides["classes"] = [c.strip() for c in classes.split(",") if c.strip()]
    return {k: v for k, v in overrides.items() if v is not None}
