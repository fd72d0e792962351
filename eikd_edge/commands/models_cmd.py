"""`eikd-edge models`: the student zoo with parameters and MACs at an input size."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from eikd_edge.console import console
from eikd_edge.ui import human

DEFAULT_SIZE = {"builtin": "32", "timm": "224", "all": "32"}


# The models command's options.
MacInputSize = Annotated[
    str | None,
    typer.Option(
        "--input-size", metavar="HxW", help="H or HxW used for the MAC count.", show_default="32; 224 for timm"
    ),
]
NumClasses = Annotated[int, typer.Option("--classes", help="Number of output classes.")]
AllTorchvision = Annotated[bool, typer.Option("--all", help="Every torchvision classifier, not only the recommended.")]
Source = Annotated[
    str,
    typer.Option(
        "--source",
        metavar="builtin|timm|all",
        help="builtin: CIFAR ResNets and torchvision; timm: curated edge students (pip install "
        "'eikd-edge[timm]'; any timm model works as timm:NAME).",
    ),
]


def models(
    input_size: MacInputSize = None,
    num_classes: NumClasses = 10,
    all_torchvision: AllTorchvision = False,
    source: Source = "builtin",
) -> None:
    """List student architectures with parameters and MACs (torch's FLOP counter, batch 1) as exported."""
    from eikd_edge.errors import EikdError
    from eikd_edge.models import timm_zoo
    from eikd_edge.models.spec import parse_input_size
    from eikd_edge.models.zoo import (
        SOURCES,
        build_model,
        count_macs,
        count_parameters,
        export_status,
        for_export,
        list_architectures,
    )

    if source not in SOURCES:
        raise EikdError(f"unknown --source {source!r}; use one of {', '.join(SOURCES)}")
    if source in ("timm", "all"):
        timm_zoo.require_timm()
    size = parse_input_size(input_size or DEFAULT_SIZE[source], "--input-size")
    table = Table(title=f"Student zoo at 3x{size[0]}x{size[1]}, {num_classes} classes")
    for column in ("architecture", "family", "params", "MACs", "export"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    for info in list_architectures(all_torchvision, source):
        export = export_status(info.name)
        try:
            model = for_export(build_model(info.name, num_classes), info.name)  # as deployed: fused
            macs = count_macs(model, size)
            table.add_row(info.name, info.family, human(count_parameters(model)), human(macs), export)
        except Exception as exc:  # e.g. an architecture that needs a larger input than asked for
            table.add_row(info.name, info.family, "-", f"n/a ({type(exc).__name__})", export)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models)
