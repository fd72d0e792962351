"""One-screen Rich summaries of a selection and of a distillation run."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from eikd_edge.console import console, err_console
from eikd_edge.ui import human, pct

if TYPE_CHECKING:
    from eikd_edge.distill import DistillResult
    from eikd_edge.run import RunPaths
    from eikd_edge.selection import Selection


_pct = partial(pct, nan_is_missing=True)  # metrics.json holds NaN for a figure it could not measure


def _names(names: list[str]) -> str:
    """Class names as written in the sidecar: `[/]` or `[link=...]` in a name is text, not Rich markup."""
    return escape(", ".join(str(name) for name in names))


def print_selection_summary(selection: Selection, run: RunPaths) -> None:
    data = selection.to_json()
    pool = data["pool"]
    how = (
        f"odsd sampling, closeness from {' + '.join(selection.closeness_from)}"
        if selection.closeness_from
        else f"score: {selection.config.score}"
    )
    table = Table(title=escape(f"Selection ({selection.method}, {how})"))
    for column in ("class", "candidates", "quota", "selected", "deficit"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in selection.per_class:
        deficit = f"[yellow]{row['deficit']}[/]" if row["deficit"] else "0"
        table.add_row(
            escape(str(row["name"])), str(row["candidates"]), str(row["quota"] or "-"), str(row["selected"]), deficit
        )
    console.print(table)
    skipped = pool["skipped"]["count"]
    reasons = ", ".join(f"{escape(str(k))}: {v}" for k, v in pool["skipped"]["by_reason"].items())
    console.print(
        f"pool: {pool['files']} files, {pool['decoded']} decoded, {skipped} skipped"
        f"{f' ({reasons})' if skipped else ''}; "
        f"selected {data['selected_count']} ({data['train_count']} train, {data['holdout_count']} held out); "
        f"{data['agreement_count']} in the fixed agreement slice no method trains on"
    )
    if data["classes_below_quota"]:
        console.print(
            f"[yellow]classes below quota:[/] {_names(data['classes_below_quota'])} — the field data barely "
            "covers them; the student will be weakest there"
        )
    console.print(f"wrote {escape(str(run.selection))}")


def print_novel_summary(novel: dict[str, Any], root: Path) -> None:
    """The clusters of field images the teacher cannot place: what the field holds that it has never seen."""
    count, size = novel["count"], novel["pool_size"]
    console.print(
        f"novel: {count} of {size} field images ({100 * count / max(size, 1):.1f}%) are unlike the bulk of the "
        f"pool: novelty score ({novel['rule']}) above {novel['score_threshold']:.2f}"
    )
    if not novel["clusters"]:
        return
    table = Table(title="Novel clusters (teacher embedding space)")
    for column in ("cluster", "size", "nearest class", "cosine", "mean conf.", "examples"):
        table.add_column(column, justify="left" if column in ("nearest class", "examples") else "right")
    for cluster in novel["clusters"]:
        examples = escape(", ".join(cluster["examples"][:3]))
        table.add_row(
            str(cluster["id"]),
            str(cluster["size"]),
            escape(str(cluster["nearest_class"])),
            f"{cluster['nearest_cosine']:.3f}",
            f"{cluster['mean_confidence']:.2f}",
            examples,
        )
    console.print(table)
    console.print(
        f"examples are relative to {escape(str(root))}; `eikd-edge report RUN` shows thumbnails of each cluster"
    )


def print_distill_summary(result: DistillResult) -> None:
    m = result.metrics
    teacher, student, train = m["teacher"], m["student"], m["train"]
    table = Table(title=escape(f"eikd-edge distill ({m['method']}) → {result.run.root}"))
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    table.add_row("architecture", teacher["format"], student["arch"])
    table.add_row("params", human(teacher["params"]), human(student["params"]))
    table.add_row("MACs", human(teacher["macs"]), human(student["macs"]))
    table.add_row("top-1 on --val", _pct(teacher["top1"]), _pct(student["top1"]))
    table.add_row("agreement with teacher (fixed slice)", "", _agreement(m["agreement"]))
    console.print(table)
    sel = m["selection"]
    if "synthesis" in m:
        syn = m["synthesis"]
        how = f"{syn['seconds']:.0f} s" + (", reused from an earlier run" if syn["reused"] else "")
        console.print(
            f"synthesised {syn['count']} images ({how}; the teacher puts {100 * syn['teacher_fit']:.0f}% in their "
            f"target class; BatchNorm prior {'on' if syn['bn_prior'] else 'off: teacher layers not visible'})"
        )
    source = "pool" if "synthesis" in m else "field"
    console.print(
        f"selected {sel['selected']} of {sel['decoded']} {source} images; {_kept(m)}; "
        f"{train['wall_s']:.1f} s training, {train['images_per_s']:,.0f} img/s on {train['device']}"
    )
    if "budget" in train:
        console.print(f"{train['steps']} steps of batch {train['batch_size']} ({train['budget']})", highlight=False)
    if sel["classes_below_quota"]:
        console.print(f"[yellow]classes below quota:[/] {_names(sel['classes_below_quota'])}")
    holdout = m["agreement"].get("selection_holdout") or {}
    if m["agreement"]["size"]:
        console.print(f"agreement: {_agreement_source(m['agreement'])}", highlight=False)
    if holdout.get("size"):
        console.print(
            f"diagnostic only: {_pct(holdout.get('top1'))} agreement on the selection's own {holdout['size']} "
            "held-out images (the teacher's surest ones: it flatters selective methods)",
            highlight=False,
        )
    if not m["agreement"]["size"] and not holdout.get("size"):
        console.print(
            "[yellow]no images held out:[/] label-free model selection was off (the last epoch was kept); "
            "add field images or raise selection.agreement_fraction"
        )
    _warn_if_near_chance(m["agreement"])
    console.print(escape(f"wrote {result.run.student}, {result.run.metrics.name}, {result.run.selection.name}"))


def _agreement_source(agreement: dict[str, Any]) -> str:
    """Which images the agreement was measured on: when half the slice picked the epoch, the other half."""
    size, whole = agreement["size"], agreement.get("slice_size", agreement["size"])
    same = "the same for every method and seed; ± is the 95% interval"
    if whole > size:
        return (
            f"on {size} of the {whole} field images no method trains on ({same}); the other {whole - size} "
            "picked the epoch, so the figure is not flattered by the pick"
        )
    return f"on {size} field images no method trains on ({same})"


def _warn_if_near_chance(agreement: dict[str, Any]) -> None:
    from eikd_edge.agreement import near_chance

    top1, guess = agreement.get("top1"), agreement.get("constant_guess")
    if near_chance(top1, guess):
        err_console.print(
            f"[yellow]warning:[/] the student agrees with the teacher on only {_pct(top1)} of the fixed slice, near "
            f"the {_pct(guess)} that always answering the teacher's most common class gets: it has barely learned "
            "(give it more steps with --epochs or --budget, or a pretrained start with --student-weights)",
            highlight=False,
        )


def _agreement(agreement: dict[str, Any]) -> str:
    """The share and its 95% interval: a small slice gives a rough number, and says so."""
    if agreement.get("top1") is None:
        return "-"
    ci = agreement.get("ci95")
    spread = f" ± {100 * ci:.1f}" if ci is not None else ""
    return f"{_pct(agreement['top1'])}{spread}"


def _kept(m: dict[str, Any]) -> str:
    """Which epoch student.pt holds and why: the policy is part of what the number means."""
    epochs, student, total = m.get("epochs") or {}, m["student"], m["train"]["epochs"]
    kept = student.get("kept_epoch", student["best_epoch"])
    if epochs.get("keep") == "last":
        return f"kept the last epoch ({kept} of {total}; train.keep=last)"
    picked_by = epochs.get("picked_by")
    if picked_by is None:
        return f"kept epoch {kept} of {total} (nothing held out to pick by)"
    return f"kept epoch {kept} of {total} (train.keep=best: highest agreement on the {picked_by})"
