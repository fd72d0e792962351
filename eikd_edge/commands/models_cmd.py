"""`eikd-edge models`: the student zoo with parameters and MACs at an input size."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from eikd_edge.console import console


def models(
    input_size: Annotated[
        str, typer.Option("--input-size", metavar="HxW", help="H or HxW used for the MAC count.")
    ] = "32",
    num_classes: Annotated[int, typer.Option("--classes", help="Number of output classes.")] = 10,
    all_torchvision: Annotated[
        bool, typer.Option("--all", help="Every torchvision classifier, not only the recommended.")
    ] = False,
) -> None:
    """List student architectures with parameters and MACs (torch's FLOP counter, batch 1)."""
    from eikd_edge.models.spec import parse_input_size
    from eikd_edge.models.zoo import build_model, count_macs, count_parameters, list_architectures

    size = parse_input_size(input_size)
    table = Table(title=f"Student zoo at 3x{size[0]}x{size[1]}, {num_classes} classes")
    for column in ("architecture", "family", "params", "MACs"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    for info in list_architectures(all_torchvision):
        try:
            model = build_model(info.name, num_classes)
            macs = count_macs(model, size)
            table.add_row(info.name, info.family, human(count_parameters(model)), human(macs))
        except Exception as exc:  # e.g. an architecture that needs a larger input than asked for
            table.add_row(info.name, info.family, "-", f"n/a ({type(exc).__name__})")
    console.print(table)


def human(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def register(app: typer.Typer) -> None:
    app.command("models")(models)
