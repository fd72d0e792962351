"""`eikd-edge select`: score the field images with the teacher and show what it keeps and what is novel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eikd_edge.commands.options import (
    CacheDir,
    Classes,
    InputSize,
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
    Unlabeled,
    resolve_cache_dir,
    spec_overrides,
    torch_threads,
)
from eikd_edge.errors import EikdError

# The select command's own options (the shared ones are in options.py).
Novel = Annotated[
    bool, typer.Option("--novel", help="Cluster the field images the teacher cannot place (novel classes).")
]
NovelClusters = Annotated[
    int | None, typer.Option("--novel-clusters", min=1, help="Number of novel clusters (default: by silhouette).")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out.")]


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
    resize: Resize = None,
    sampler: Sampler = None,
    novel: Novel = False,
    novel_clusters: NovelClusters = None,
    overwrite: Overwrite = False,
    threads: TrainThreads = None,
    cache_dir: CacheDir = None,
) -> None:
    """Score the field images with the teacher and show what it finds (writes selection.json)."""
    from eikd_edge.commands.summary import print_novel_summary, print_selection_summary
    from eikd_edge.config import load_recipe
    from eikd_edge.distill import DistillInputs, check_inputs, run_selection, write_resolved
    from eikd_edge.novel import NovelConfig
    from eikd_edge.run import RunPaths
    from eikd_edge.runfolder import Replacement, existing_run_message, folder_state, refuse_foreign, writing_run

    settings = load_recipe(recipe, [*(overrides or []), *([f"selection.sampler={sampler}"] if sampler else [])])
    spec = spec_overrides(input_size, mean, std, classes, resize)
    shared = resolve_cache_dir(cache_dir)
    novel_config = NovelConfig(clusters=novel_clusters, seed=settings.train.seed) if novel else None
    with torch_threads(threads) as workers, writing_run(out, "select", create=True) as run:
        inputs = DistillInputs(teacher, unlabeled, None, teacher_arch, trust_pickle, spec, workers, shared)
        state = folder_state(run)
        if state == "foreign":
            refuse_foreign(run)
        if state == "run" and not overwrite:
            raise EikdError(existing_run_message(run, "select"))
        checked = check_inputs(inputs, settings, run)
        with Replacement.begin(run):
            _, selection, extras = run_selection(
                inputs, settings, out, teacher=checked.teacher, novel=novel_config, pool_scan=checked.pool_scan
            )
            write_resolved(run, inputs, settings, checked, stage="select")
    print_selection_summary(selection, RunPaths(out))
    if "novel" in extras:
        print_novel_summary(extras["novel"], selection.pool.root)


def register(app: typer.Typer) -> None:
    app.command("select")(select_command)
