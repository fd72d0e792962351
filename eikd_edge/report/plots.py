"""The report's figures as PNG bytes. Uses matplotlib's object API with the Agg canvas directly: no pyplot, no
global backend switch, safe on headless machines and in threads."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from eikd_edge.data import BadImage, decode_image
from eikd_edge.report.confusion import Confusion
from eikd_edge.report.model import NovelSection, Report, SelectionSection, TrainingSection

THUMB_PX = 64
GROUP_TITLES = {
    "most_confident": "most confident selected",
    "least_confident": "least confident selected",
    "rejected": "rejected",
}


def png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def selection_histogram(sel: SelectionSection) -> bytes:
    """Candidates and selected per class; the red part is each class's deficit below its fair share."""
    names = [c.name for c in sel.classes]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 0.35 * len(names) + 2), 3.6))
    ax = fig.add_subplot()
    ax.bar(x, [c.candidates for c in sel.classes], 0.8, color="#c6dbef", label="candidates")
    selected = np.array([c.selected for c in sel.classes])
    ax.bar(x, selected, 0.5, color="#2171b5", label="selected")
    deficits = np.array([c.deficit for c in sel.classes])
    if deficits.any():
        ax.bar(x, deficits, 0.5, bottom=selected, color="none", edgecolor="#cb181d", hatch="///", label="deficit")
    quotas = [c.quota + c.deficit if c.quota is not None else np.nan for c in sel.classes]
    ax.scatter(x, quotas, marker="_", s=400, color="black", label="fair share")
    ax.set_xticks(x, names, rotation=90 if len(names) > 20 else 0, fontsize=8)
    ax.set_ylabel("images")
    ax.set_title("Field images per predicted class")
    ax.legend(fontsize=8, loc="upper right")
    return png(fig)


def training_curves(tr: TrainingSection) -> bytes:
    """Each loss term, agreement and true accuracy, against epochs (left) and wall time (right)."""
    hist = tr.history
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(hist)]
    wall = [h.get("wall_s", np.nan) for h in hist]
    terms = sorted({k for h in hist for k in (h.get("loss") or {})}, key=lambda k: (k != "total", k))
    fig = Figure(figsize=(10, 6))
    axes = fig.subplots(2, 2, sharey="row")
    for col, (xs, label) in enumerate(((epochs, "epoch"), (wall, "wall time (s)"))):
        loss_ax, acc_ax = axes[0][col], axes[1][col]
        for term in terms:
            loss_ax.plot(xs, [(h.get("loss") or {}).get(term, np.nan) for h in hist], marker="o", ms=3, label=term)
        for key, name in (("agreement", "teacher agreement (held-out field)"), ("val_top1", "top-1 on labels")):
            values = [h.get(key) if h.get(key) is not None else np.nan for h in hist]
            if not np.all(np.isnan(np.asarray(values, dtype=float))):
                acc_ax.plot(xs, values, marker="o", ms=3, label=name)
        if tr.best_epoch is not None and tr.best_epoch in epochs:
            acc_ax.axvline(xs[epochs.index(tr.best_epoch)], color="grey", ls=":", lw=1, label="best epoch")
        loss_ax.set_title(f"loss terms vs {label}", fontsize=10)
        acc_ax.set_xlabel(label)
        if col == 0:
            acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        acc_ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("loss")
    axes[1][0].set_ylabel("fraction")
    axes[0][0].legend(fontsize=8)
    axes[1][0].legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def confusion_plot(m: Confusion) -> bytes:
    counts = np.asarray(m.counts, dtype=float)
    n = len(m.classes)
    fig = Figure(figsize=(min(2 + 0.4 * n, 12), min(1.6 + 0.4 * n, 11)))
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    if n <= 20:
        for i, j in zip(*np.nonzero(counts), strict=True):
            color = "white" if counts[i, j] > counts.max() / 2 else "black"
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(n), m.classes, rotation=90 if n > 12 else 0, fontsize=7)
    ax.set_yticks(range(n), m.classes, fontsize=7)
    ax.set_xlabel("student prediction")
    ax.set_ylabel(m.reference)
    ax.set_title(f"{m.title}: {m.agreement:.1%} on {m.n} images", fontsize=10)
    return png(fig)


def pareto_chart(report: Report) -> bytes | None:
    """Quality (true top-1 when known, else teacher agreement) against p50 latency at the smallest batch."""
    bench = report.bench
    rows = [r for r in bench.rows if r.ok and r.latency_ms and r.batch is not None] if bench else []
    if not rows:
        return None
    batch = min(r.batch for r in rows if r.batch is not None)
    rows = [r for r in rows if r.batch == batch]
    use_top1 = all(r.top1 is not None for r in rows)
    key = "top1" if use_top1 else "agree_teacher"
    points = [
        (r.latency_ms.p50, getattr(r, key), f"{r.model} ({r.backend})") for r in rows if getattr(r, key) is not None
    ]
    if not points:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    front, best = [], -np.inf
    for i, (lat, quality, label) in enumerate(sorted(points)):
        reference = label.startswith("teacher")
        ax.scatter(lat, quality, s=90 if reference else 40, marker="*" if reference else "o", zorder=3)
        offset = (6, 4 + 11 * (i % 3))  # stagger labels: fast artifacts often sit close together
        ax.annotate(label, (lat, quality), textcoords="offset points", xytext=offset, fontsize=8)
        if not reference and quality > best:
            front.append((lat, quality))
            best = quality
    if front:
        ax.step(
            *zip(*front, strict=True), where="post", color="#cb181d", lw=1, label="Pareto front (student artifacts)"
        )
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {batch} (ms, log scale)")
    ax.set_ylabel("top-1 on labels" if use_top1 else "top-1 agreement with teacher")
    ax.set_title("Quality vs latency across artifacts", fontsize=10)
    ax.legend(fontsize=8)
    return png(fig)


def thumbnail_grid(sel: SelectionSection) -> tuple[bytes | None, int]:
    """One row per group of field images, read from the pool root; returns the PNG and how many were missing."""
    root = Path(str(sel.pool.get("root", "")))
    items = (
        (
            GROUP_TITLES.get(th.group, th.group),
            th.path,
            f"{th.predicted}{'' if th.confidence is None else f' {th.confidence:.2f}'}",
        )
        for th in sel.thumbnails
    )
    rows, missing = _decode_rows(root, items)
    return (image_rows(rows) if rows else None), missing


def novel_grid(novel: NovelSection, root: Path) -> tuple[bytes | None, int]:
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


def image_rows(rows: dict[str, list[tuple[np.ndarray, str]]]) -> bytes:
    """A grid of captioned thumbnails, one labelled row per entry (the label left of the row)."""
    cols = max(len(v) for v in rows.values())
    fig = Figure(figsize=(1.2 * cols + 1.5, 1.45 * len(rows)))
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    for r, (label, items) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(items):
                ax.imshow(items[c][0])
                ax.set_title(items[c][1], fontsize=7)
        axes[r][0].text(-0.15, 0.5, label, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8)
    return png(fig)


def figures(report: Report) -> list[tuple[str, str, bytes]]:
    """(section, caption, png) for every figure the report has data for, in page order."""
    out: list[tuple[str, str, bytes]] = []
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
            out.append(("images", f"Most and least confident selected, and rejected field images{note}", grid))
    return out
