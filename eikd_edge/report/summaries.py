"""The report's one-line text summaries (validation verdict, selection, novel samples, training, confusion), shared
by the renderers like the tables in tables.py, which holds only tables."""

from __future__ import annotations

from eikd_edge.report import text as t
from eikd_edge.report.model import Report
from eikd_edge.run import NAMES


def verdict_line(report: Report) -> str:
    h = report.headline
    if h.validation_passed is None:
        return "Validation: not run."
    gate = f" (gate {t.pct(h.gate)} top-1 agreement with the FP32 student)" if h.gate is not None else ""
    return f"Validation: {'passed' if h.validation_passed else 'FAILED'}{gate}."


def selection_summary(report: Report) -> str:
    sel = report.selection
    if sel is None:
        return f"No {NAMES.selection.name}."
    pool = sel.pool
    skipped = pool.get("skipped") or {}
    reasons = ", ".join(f"{k}: {v}" for k, v in (skipped.get("by_reason") or {}).items())
    text = (
        f"Pool {pool.get('root', '?')}: {pool.get('files', '?')} files, {pool.get('decoded', '?')} decoded, "
        f"{skipped.get('count', 0)} skipped{f' ({reasons})' if reasons else ''}. Selected {sel.selected} "
        f"({sel.train} train, {sel.holdout} held out for label-free validation)."
    )
    if sel.below_quota:
        text += f" Classes below quota: {', '.join(sel.below_quota)}; the field data barely covers them."
    return text


def novel_summary(report: Report) -> str:
    nov = report.novel
    if nov is None:
        return "No novel-sample search."
    share = f" ({nov.count / nov.pool_size:.1%})" if nov.pool_size else ""
    return (
        f"{nov.count} of {nov.pool_size} field images{share} unlike the bulk of the pool: novelty score "
        f"({nov.rule}) above {nov.score_threshold:.2f}; {len(nov.clusters)} cluster(s) shown. They may be classes "
        "the teacher was never taught."
    )


def training_summary(report: Report) -> str:
    tr = report.training
    if tr is None:
        return f"No {NAMES.metrics.name}."
    s = tr.summary
    return (
        f"Method {tr.method}: {s.get('epochs', '?')} epochs, {s.get('steps', '?')} steps, "
        f"{t.seconds(s.get('wall_s'))} on {s.get('device', '?')} ({t.rate(s.get('images_per_s'))} images/s); "
        f"best epoch {tr.best_epoch} (by teacher agreement on the fixed field slice no method trains on)."
    )


def confusion_summary(report: Report) -> list[str]:
    matrices = report.confusion.matrices if report.confusion else []
    return [
        f"{m.title} on {m.images}: diagonal {m.agreement:.1%} ({m.n} images, {len(m.classes)} classes)"
        for m in matrices
    ]
