"""The report's figures as matplotlib Figures, serialised to inline SVG by `svg`. Uses matplotlib's object API
(no pyplot, no global backend switch), so it is safe on headless machines and in threads. matplotlib is imported
here only, and this module only when a report is written, so the CLI starts without it.

Every figure keeps its legend and labels off the data (legends sit outside the axes, points are named in the
legend rather than by free text), and marks each part with an SVG id (`gid`) that the browser test checks.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from eikd_edge.data import BadImage, decode_image
from eikd_edge.report.confusion import Confusion
from eikd_edge.report.model import MIN_ITERS, NovelSection, Report, SelectionSection, TrainingSection, failed_models

THUMB_PX = 64
GROUP_TITLES = {
    "most_confident": "most confident selected",
    "least_confident": "least confident selected",
    "rejected": "rejected",
}
THUMB_CAPTION = "under each image: the class the teacher predicts and its confidence (softmax probability)"
LOSS_NAMES = {"total": "total loss", "kd": "KD loss", "feature": "feature loss", "relation": "relation loss"}
_XML_NOISE = re.compile(r'<\?xml[^>]*>\s*|<!DOCTYPE[^>]*>\s*|<metadata>.*?</metadata>\s*|\sxmlns(:\w+)?="[^"]*"', re.S)


def svg(fig: Figure, salt: str) -> str:
    """The figure as an <svg> element for inline HTML: text stays text (small, searchable), no namespace URLs or
    metadata (the page references nothing outside itself), every id prefixed with `salt` so two figures on one
    page never clash (matplotlib starts its numbering, figure_1, patch_1, afresh in each file)."""
    FigureCanvasSVG(fig)
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = _XML_NOISE.sub("", buffer.getvalue()).strip()
    return re.sub(r'(\bid="|href="#|url\(#)', rf"\g<1>{salt}-", text)  # matplotlib numbers ids per figure


def selection_histogram(sel: SelectionSection) -> Figure:
    """Candidates and selected per class against the fair share; the hatched part is each class's deficit."""
    names = [c.name for c in sel.classes]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 0.35 * len(names) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(x, [c.candidates for c in sel.classes], 0.8, color="#c6dbef", label="candidates")
    selected = np.array([c.selected for c in sel.classes])
    ax.bar(x, selected, 0.5, color="#2171b5", label="selected")
    deficits = np.array([c.deficit for c in sel.classes])
    if deficits.any():
        ax.bar(
            x,
            deficits,
            0.5,
            bottom=selected,
            color="none",
            edgecolor="#cb181d",
            hatch="///",
            label="deficit (fair share − selected)",
        )
    if sel.fair_share is not None:
        ax.axhline(sel.fair_share, color="black", ls="--", lw=1, label=f"fair share ({sel.fair_share} per class)")
    ax.set_xticks(x, names, rotation=90 if len(names) > 20 else 0, fontsize=8)
    ax.set_xlabel("class predicted by the teacher")
    ax.set_ylabel("field images")
    ax.set_title("Field images per predicted class")
    fig.legend(loc="outside lower center", ncols=4, fontsize=8, frameon=False).set_gid("selection-legend")
    ax.patch.set_gid("selection-axes")
    return fig


def training_curves(tr: TrainingSection) -> Figure:
    """Small multiples: each loss term on its own y scale (a 0.05 feature term next to a KD term falling from 18
    to 4 would lie flat on zero on a shared axis), then agreement and top-1; all panels share the epoch axis."""
    hist = tr.history
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(hist)]
    terms = sorted({k for h in hist for k in (h.get("loss") or {})}, key=lambda k: (k != "total", k))
    panels = [*terms, None]  # None: the agreement / top-1 panel
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.6 * cols, 2.5 * rows + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, sharex=True, squeeze=False)).ravel()
    best = tr.best_epoch if tr.best_epoch in epochs else None
    for k, (ax, term) in enumerate(zip(axes, panels, strict=False)):
        ax.patch.set_gid(f"training-axes-{k}")
        if term is None:
            _accuracy_panel(ax, epochs, hist)
        else:
            values = [(h.get("loss") or {}).get(term, np.nan) for h in hist]
            ax.plot(epochs, values, marker="o", ms=3, color="#2171b5", gid=f"training-loss-{term}")
            ax.set_title(LOSS_NAMES.get(term, f"{term} loss"), fontsize=10)
            ax.margins(y=0.15)
        if best is not None:
            ax.axvline(best, color="grey", ls=":", lw=1, label="best epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True, labelsize=8)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    fig.legend(
        *axes[len(panels) - 1].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8
    ).set_gid("training-legend")
    fig.suptitle("Training: each loss term on its own scale, shared epoch axis", fontsize=10)
    return fig


def _accuracy_panel(ax: Any, epochs: list[Any], hist: list[dict[str, Any]]) -> None:
    for key, name in (("agreement", "teacher agreement (held-out field)"), ("val_top1", "top-1 on labels")):
        values = [h.get(key) if h.get(key) is not None else np.nan for h in hist]
        if not np.all(np.isnan(np.asarray(values, dtype=float))):
            ax.plot(epochs, values, marker="o", ms=3, label=name, gid=f"training-{key}")
    ax.set_ylim(0, 1.02)
    ax.set_title("agreement and top-1", fontsize=10)


def confusion_plot(m: Confusion) -> Figure:
    counts = np.asarray(m.counts, dtype=float)
    n = len(m.classes)
    fig = Figure(figsize=(min(1.6 + 0.36 * n, 12), min(1.4 + 0.36 * n, 11)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    bar = fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: 0, 2, 4, never 2.5
    if n <= 20:
        for i, j in zip(*np.nonzero(counts), strict=True):
            color = "white" if counts[i, j] > counts.max() / 2 else "black"
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(n), m.classes, rotation=90 if n > 12 else 0, fontsize=7)
    ax.set_yticks(range(n), m.classes, fontsize=7)
    ax.set_xlabel("student prediction")
    ax.set_ylabel(m.reference)
    ax.set_title(f"{m.title}: {m.agreement:.1%} on {m.n} images", fontsize=10)
    return fig


# The Pareto front of the passing student artifacts: a step line through their points.
_FRONT_STYLE: dict[str, Any] = {
    "drawstyle": "steps-post", "color": "#cb181d", "lw": 1.2, "marker": "s", "ms": 12, "mfc": "none", "zorder": 2,
    "label": "Pareto front (student artifacts that passed)", "gid": "pareto-front",
}  # fmt: skip


def pareto_chart(report: Report) -> Figure | None:
    """Quality (true top-1 when known, else teacher agreement) against p50 latency at the smallest batch.

    Each point is named in the legend (labels next to points overlap when artifacts run at similar speed); an
    artifact that failed validation is hollow and grey and never on the front; a latency from fewer than
    MIN_ITERS timed iterations says so in its name.
    """
    bench = report.bench
    rows = [r for r in bench.rows if r.ok and r.latency_ms and r.batch is not None] if bench else []
    if not rows:
        return None
    batch = min(r.batch for r in rows if r.batch is not None)
    rows = [r for r in rows if r.batch == batch]
    use_top1 = all(r.top1 is not None for r in rows)
    key = "top1" if use_top1 else "agree_teacher"
    rows = sorted((r for r in rows if getattr(r, key) is not None), key=lambda r: r.latency_ms.p50)
    if not rows:
        return None
    failed = failed_models(report)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    front: list[tuple[float, float]] = []
    best = -np.inf
    for i, r in enumerate(rows):
        lat, quality = r.latency_ms.p50, getattr(r, key)
        label = f"{r.model} ({r.backend})"
        if r.iters < MIN_ITERS:
            label += f", n={r.iters}: latency unreliable"
        style: dict[str, Any] = {"s": 60, "zorder": 3}
        if r.model in failed:
            label += ", FAILED gate"
            style |= {"facecolors": "none", "edgecolors": "#8c959f", "linewidths": 1.5}
        else:
            style |= {"color": f"C{i % 10}"} | ({"marker": "*", "s": 140} if r.model == "teacher" else {})
        ax.scatter(lat, quality, label=label, gid=f"pareto-point-{r.model}", **style)
        if r.model not in failed and r.model != "teacher" and quality > best:
            front.append((lat, quality))
            best = quality
    if front:
        xs, ys = zip(*front, strict=True)
        ax.plot(xs, ys, **_FRONT_STYLE)
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(f"p50 latency at batch {batch} (ms, log scale)")
    ax.set_ylabel("top-1 on labels" if use_top1 else "top-1 agreement with teacher")
    ax.set_title("Quality vs latency across artifacts", fontsize=10)
    fig.legend(loc="outside right upper", fontsize=8).set_gid("pareto-legend")
    ax.patch.set_gid("pareto-axes")
    return fig


def thumbnail_grid(sel: SelectionSection) -> tuple[Figure | None, int]:
    """One row per group of field images, read from the pool root; returns the figure and how many were missing."""
    root = Path(str(sel.pool.get("root", "")))
    items = (
        (
            GROUP_TITLES.get(th.group, th.group),
            th.path,
            f"class {th.predicted}" + ("" if th.confidence is None else f"\nconf {th.confidence:.2f}"),
        )
        for th in sel.thumbnails
    )
    rows, missing = _decode_rows(root, items)
    return (image_rows(rows) if rows else None), missing


def novel_grid(novel: NovelSection, root: Path) -> tuple[Figure | None, int]:
    """One row per novel-sample cluster (its example images, closest to the centre first), like thumbnail_grid."""
    items = (
        (f"cluster {c.id}: {c.size}\nnearest {c.nearest_class}", path, _short(Path(path).name))
        for c in novel.clusters
        for path in c.examples
    )
    rows, missing = _decode_rows(root, items)
    return (image_rows(rows) if rows else None), missing


def _short(name: str, width: int = 14) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _decode_rows(
    root: Path, items: Iterable[tuple[str, str, str]]
) -> tuple[dict[str, list[tuple[np.ndarray, str]]], int]:
    """(row label, path relative to root, caption) -> decoded thumbnails per row; files that fail are counted."""
    rows: dict[str, list[tuple[np.ndarray, str]]] = {}
    missing = 0
    for label, path, caption in items:
        try:
            pixels = decode_image(root / path, (THUMB_PX, THUMB_PX))
        except BadImage:
            missing += 1
            continue
        rows.setdefault(label, []).append((pixels, caption))
    return rows, missing


def image_rows(rows: dict[str, list[tuple[np.ndarray, str]]]) -> Figure:
    """A grid of captioned thumbnails, one labelled row per entry (the label left of the row)."""
    cols = max(len(v) for v in rows.values())
    fig = Figure(figsize=(1.2 * cols + 1.5, 1.6 * len(rows)))
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    for r, (label, items) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(items):
                ax.imshow(items[c][0])
                ax.set_title(items[c][1], fontsize=7)
        axes[r][0].text(-0.15, 0.5, label, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8)
    return fig


def figures(report: Report) -> list[tuple[str, str, Figure]]:
    """(section, caption, figure) for every figure the report has data for, in page order."""
    out: list[tuple[str, str, Figure]] = []
    if report.selection and report.selection.classes:
        out.append(
            ("selection", "Selection per class with fair share and deficits", selection_histogram(report.selection))
        )
    if report.novel and report.novel.clusters:
        root = Path(str((report.selection.pool if report.selection else {}).get("root", "")))
        grid, missing = novel_grid(report.novel, root)
        note = f" ({missing} image(s) missing from the pool)" if missing else ""
        if grid is not None:
            out.append(("novel", f"Examples per novel-sample cluster, closest to its centre first{note}", grid))
    if report.training and report.training.history:
        out.append(("training", "Training curves", training_curves(report.training)))
    if (chart := pareto_chart(report)) is not None:
        out.append(("benchmark", "Quality vs latency (Pareto)", chart))
    for m in report.confusion.matrices if report.confusion else []:
        out.append(("confusion", f"{m.title} ({m.images})", confusion_plot(m)))
    if report.selection and report.selection.thumbnails:
        grid, missing = thumbnail_grid(report.selection)
        note = f" ({missing} image(s) missing from the pool)" if missing else ""
        if grid is not None:
            caption = f"Most and least confident selected, and rejected field images; {THUMB_CAPTION}{note}"
            out.append(("images", caption, grid))
    return out
