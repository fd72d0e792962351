"""Every table of the report as plain text cells, built once; the terminal, Markdown and HTML renderers only lay
them out, so the three always agree. The latency table is in bench_table.py, the one-line summaries in
summaries.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eikd_edge.report import text as t
from eikd_edge.report.model import MIN_ITERS, Report


@dataclass(frozen=True)
class TextTable:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    caption: str = ""
    left: tuple[str, ...] = field(default=())  # left-aligned columns; the rest are numbers, right-aligned
    notes: list[str] = field(default_factory=list)  # footnotes: why a row was skipped, where a budget ran out


def compression(report: Report) -> TextTable:
    rows = [
        (r.model, t.count(r.params), t.count(r.macs), t.size(r.size_bytes), t.times(r.size_ratio))
        for r in report.headline.compression
    ]
    return TextTable(
        "Compression",
        ("model", "params", "MACs", "file size", "smaller than teacher"),
        rows,
        "params and MACs at batch 1; artifacts share the student's network",
        left=("model",),
    )


def speed(report: Report) -> TextTable:
    """A speed-up from fewer than MIN_ITERS timed iterations is not headlined: the cell says why, a note says how."""
    rows = [
        (
            r.model,
            r.backend,
            r.precision,
            str(r.batch),
            str(r.iters) if r.iters else t.DASH,
            t.ms(r.p50_ms),
            t.rate(r.images_per_s),
            t.times(r.speedup) if r.reliable else "unreliable",
        )
        for r in report.headline.speed
    ]
    notes = []
    if any(not r.reliable for r in report.headline.speed):
        notes.append(
            f"unreliable: fewer than {MIN_ITERS} timed iterations here or in the PyTorch reference;"
            " `eikd-edge bench RUN --iters 200` gives speed-ups worth quoting"
        )
    return TextTable(
        "Speed-up vs the PyTorch eager student",
        ("model", "backend", "precision", "batch", "iters", "p50 ms", "images/s", "speed-up"),
        rows,
        "median host-to-host latency from bench.json, same batch size; iters: timed iterations behind the p50",
        left=("model", "backend", "precision"),
        notes=notes,
    )


def quality(report: Report) -> TextTable:
    rows = [
        (
            r.model,
            r.precision or t.DASH,
            t.pct(r.agree_teacher),
            t.pct(r.agree_student),
            t.pct(r.top1),
            t.verdict(r.gate_passed),
            r.status or t.DASH,
        )
        for r in report.headline.quality
    ]
    return TextTable(
        "Agreement, accuracy and gates",
        ("model", "precision", "agree T", "agree S", "top-1", "gate", "status"),
        rows,
        "agree T / S: top-1 agreement with the teacher / the FP32 student on held-out field images; "
        "top-1: accuracy on labeled images when the run had them; gate: agree S at least "
        + (t.pct(report.headline.gate) if report.headline.gate is not None else "the export gate"),
        left=("model", "precision", "gate", "status"),
    )


def selection_classes(report: Report) -> TextTable:
    """Fair share next to quota and selected: a class with quota = selected can still be short of its fair share
    (it had fewer candidates), and that shortfall is its deficit."""
    sel = report.selection
    fair = t.DASH if sel is None or sel.fair_share is None else str(sel.fair_share)
    rows = (
        []
        if sel is None
        else [
            (
                c.name,
                str(c.candidates),
                fair,
                t.DASH if c.quota is None else str(c.quota),
                str(c.selected),
                str(c.deficit),
            )
            for c in sel.classes
        ]
    )
    return TextTable(
        "Selection per class",
        ("class", "candidates", "fair share", "quota", "selected", "deficit"),
        rows,
        "fair share: the selection budget split equally across classes; quota: what the class was given after "
        "the fair share of classes with too few candidates moved to the others; deficit: fair share − candidates "
        "for a class with fewer candidates than its fair share (the field data barely covers it)",
        left=("class",),
    )


def novel_clusters(report: Report) -> TextTable:
    clusters = report.novel.clusters if report.novel else []
    rows = [
        (str(c.id), str(c.size), c.nearest_class, f"{c.nearest_cosine:.3f}", f"{c.mean_confidence:.2f}")
        for c in clusters
    ]
    return TextTable(
        "Novel-sample clusters",
        ("cluster", "size", "nearest class", "nearest cosine", "mean confidence"),
        rows,
        "nearest class: the class whose prototype (teacher embedding space) is closest to the cluster centre; "
        "mean confidence: the teacher's mean top-1 probability on the cluster",
        left=("nearest class",),
    )


def history(report: Report) -> TextTable:
    hist = report.training.history if report.training else []
    terms = sorted({k for h in hist for k in (h.get("loss") or {})}, key=lambda k: (k != "total", k))
    rows = [
        (
            str(h.get("epoch")),
            str(h.get("step")),
            t.seconds(h.get("wall_s")),
            *(f"{(h.get('loss') or {}).get(k, float('nan')):.4f}" for k in terms),
            t.pct(h.get("agreement")),
            t.pct(h.get("val_top1")),
        )
        for h in hist
    ]
    return TextTable(
        "Training history",
        ("epoch", "step", "wall", *(f"loss {k}" for k in terms), "agreement", "val top-1"),
        rows,
        "agreement: with the teacher on the fixed field slice no method trains on (picks the best epoch "
        "without labels)",
    )


def validation(report: Report) -> TextTable:
    data = report.validation or {}
    rows = []
    for name, entry in (data.get("artifacts") or {}).items():
        p = entry.get("parity") or {}
        rows.append(
            (
                name,
                t.pct(p.get("agree_student")),
                t.pct(p.get("agree_teacher")),
                t.pct(p.get("flip_rate")),
                f"{p['max_abs_dprob']:.1e}" if isinstance(p.get("max_abs_dprob"), int | float) else t.DASH,
                f"{p['max_abs_dlogit']:.1e}" if isinstance(p.get("max_abs_dlogit"), int | float) else t.DASH,
                str(entry.get("status")) + (f": {entry['reason']}" if entry.get("reason") else ""),
            )
        )
    device_rows, notes = _device_rows(data.get("device"))
    images = data.get("images") or {}
    return TextTable(
        f"Parity on {images.get('n', '?')} {images.get('source', '')} images, gate {t.pct(data.get('gate'))}",
        ("artifact", "agree S", "agree T", "flips", "Δprob", "Δlogit", "status"),
        rows + device_rows,
        "flips: top-1 changed vs the FP32 student; Δprob, Δlogit: largest absolute difference; "
        "'on device' rows: measured by eikd_device.py on the device (validate --device-result)",
        left=("artifact", "status"),
        notes=notes,
    )


def _device_rows(device: Any) -> tuple[list[tuple[str, ...]], list[str]]:
    """Rows for engines validated on the device, and their host-to-host latency as footnotes."""
    if not isinstance(device, dict) or not isinstance(device.get("engines"), dict):
        return [], []
    info = device.get("info") or {}
    where = str(info.get("board") or info.get("gpu_name") or "device")
    rows, notes = [], []
    for name, entry in device["engines"].items():
        p = entry.get("parity") or {}
        rows.append(
            (
                f"{name} on device",
                t.pct(p.get("agree_student")),
                t.DASH,
                t.pct(p.get("flip_rate")),
                f"{p['max_abs_dprob']:.1e}" if isinstance(p.get("max_abs_dprob"), int | float) else t.DASH,
                f"{p['max_abs_dlogit']:.1e}" if isinstance(p.get("max_abs_dlogit"), int | float) else t.DASH,
                str(entry.get("status")) + (f": {entry['reason']}" if entry.get("reason") else ""),
            )
        )
        latency = ", ".join(
            f"batch {x.get('batch')}: p50 {x.get('p50_ms'):.2f} ms, p99 {x.get('p99_ms'):.2f} ms"
            for x in entry.get("latency") or []
            if isinstance(x, dict)
            and isinstance(x.get("p50_ms"), int | float)
            and isinstance(x.get("p99_ms"), int | float)
        )
        if latency:
            notes.append(f"{name} on {where} (TensorRT {info.get('tensorrt_version')}): {latency}")
    return rows, notes
