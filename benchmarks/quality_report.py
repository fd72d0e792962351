"""Summaries of benchmarks.quality runs: mean ± std per (row, mode), the markdown table and the curves plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

PLOTS = Path(__file__).resolve().parent / "plots"
STATS = (
    "top1",
    "agreement",
    "holdout_agreement",
    "picked_top1",
    "last_top1",
    "slice_agreement",
    "slice_in_class_top1",
)
MEANS = ("wall_s", "total_s", "steps", "train_images")
METHODS = ("eikd", "kd", "random", "dfnd")  # plotted; ablations stay in the table


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (row, mode), in the order first run; numbers over the seeds that ran."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["row"], run["mode"]), []).append(run)
    rows = []
    for (name, mode), members in groups.items():
        row: dict[str, Any] = {"row": name, "mode": mode, "seeds": [m["seed"] for m in members]}
        for key in STATS:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([m[key] for m in members if m.get(key) is not None])
        for key in MEANS:
            row[key] = _mean_std([m[key] for m in members if m.get(key) is not None])[0]
        rows.append(row)
    return rows


def _pct(row: dict[str, Any], key: str) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    return "—" if mean is None else f"{100 * mean:.1f} ± {100 * (std or 0):.1f}"


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown_table(summary: dict[str, Any]) -> str:
    teacher = summary["teacher"]
    field_top1 = teacher["slice"].get("slice_in_class_top1")
    lines = [
        f"\n{summary['task']}: seeds {summary['seeds']}; {summary['machine']}",
        f"slice: {summary['slice']['size']} field images ({summary['slice']['kinds']}), the same for every run\n",
        "| method | mode | true top-1 (%) | picked / last epoch top-1 (%) | agreement, fixed field slice (%) "
        "| holdout agreement, diagnostic (%) | slice agreement (%) | slice in-class top-1 (%) "
        "| train (s) | total (s) | steps | train images |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| teacher | — | {100 * teacher.get('val_top1', float('nan')):.1f} | — | — | — | 100.0 | "
        f"{_num(None if field_top1 is None else 100 * field_top1, 1)} "
        "| — | — | — | — |",
    ]  # fmt: skip
    for row in summary.get("rows", []):
        lines.append(
            f"| {row['row']} | {row['mode']} | {_pct(row, 'top1')} | {_pct(row, 'picked_top1')} / "
            f"{_pct(row, 'last_top1')} | {_pct(row, 'agreement')} | {_pct(row, 'holdout_agreement')} | "
            f"{_pct(row, 'slice_agreement')} | {_pct(row, 'slice_in_class_top1')} | {_num(row['wall_s'], 1)} | "
            f"{_num(row['total_s'], 1)} | {_num(row['steps'])} | {_num(row['train_images'])} |"
        )
    return "\n".join(lines)


def mean_curve(histories: list[list[dict[str, Any]]]) -> tuple[list[float], list[float]]:
    """Mean (training seconds, val top-1) per epoch over seeds, up to the shortest history."""
    points = [[h for h in hist if h.get("val_top1") is not None and h.get("wall_s") is not None] for hist in histories]
    length = min((len(p) for p in points), default=0)
    xs = [statistics.fmean(p[i]["wall_s"] for p in points) for i in range(length)]
    ys = [statistics.fmean(100 * p[i]["val_top1"] for p in points) for i in range(length)]
    return xs, ys


def plot_curves(summary: dict[str, Any], path: Path, methods: tuple[str, ...] = METHODS) -> None:
    """Val top-1 against training seconds per method (mean over seeds), one panel per budget mode; the
    plain-KD reference and the teacher on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary["runs"]
    modes = list(dict.fromkeys(r["mode"] for r in runs if r["mode"] != "reference")) or ["reference"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        names = [m for m in methods if any(r["row"] == m and r["mode"] == mode for r in runs)]
        series = [(n, mode, "-") for n in names]
        series += [(n, "reference", "--") for n in dict.fromkeys(r["row"] for r in runs if r["mode"] == "reference")]
        for name, group, style in series:
            xs, ys = mean_curve([r["history"] for r in runs if r["row"] == name and r["mode"] == group])
            if xs:
                ax.plot(xs, ys, style, marker=".", label=name)
        top1 = summary["teacher"].get("val_top1")
        if top1 is not None:
            ax.axhline(100 * top1, color="grey", linestyle=":", label="teacher")
        ax.set_title(f"{summary['task']}: {mode}")
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("val top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"mean over seeds {summary['seeds']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
