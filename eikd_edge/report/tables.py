"""Every table of the report as plain text cells, built once; the terminal, Markdown and HTML renderers only lay
them out, so the three always agree."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from eikd_edge.bench import BenchResult
from eikd_edge.report import text as t
from eikd_edge.report.model import MIN_ITERS, Report, failed_models
from eikd_edge.run import NAMES


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


def _preprocess_note(result: BenchResult) -> str:
    """Files to the uint8 inputs the table starts from, timed on the same images: add it for files in, logits out."""
    times = ", ".join(f"batch {p.batch}: p50 {t.ms(p.latency_ms.p50)}" for p in result.preprocess)
    return f"before these times, field files to inputs ({result.preprocess[0].policy}; 1 thread): {times} ms"


def bench(result: BenchResult | None, failed: Collection[str] = ()) -> TextTable:
    """Compact enough for a 100-column terminal: skip/fail reasons and budget stops go to footnotes.

    `failed`: artifacts whose validation failed (the report passes the latest validate.json state); such a row
    says "failed gate", never "ok", even though its timing succeeded. A single timed call shows "n=1", not a
    spread of ± 0.
    """
    rows, notes = [], []
    few = False
    for r in result.rows if result else []:
        lat = r.latency_ms
        spread = (
            f"{t.ms(lat.mean)} ± {t.ms(lat.std)}" if lat and r.iters != 1 else f"{t.ms(lat.mean)} (n=1)" if lat else ""
        )
        numbers = (t.ms(lat.p50), t.ms(lat.p90), t.ms(lat.p99), spread) if lat else ()
        status = r.status.split(":")[0]
        few = few or (r.ok and r.iters < MIN_ITERS)
        if not r.ok:
            notes.append(f"{r.model}: {r.status}")
        elif r.model in failed or r.gate_passed is False:
            status = "failed gate"
            notes.append(f"{r.model}: failed its validation gate: timed, but not fit to ship")
        elif r.budget_exhausted:
            status = "ok*"
            notes.append(f"{r.model} batch {r.batch}: budget spent after {r.iters} of {r.iters_requested} iterations")
        rows.append(
            (
                r.backend,
                r.model,
                r.precision if r.ok or "/" not in r.precision else t.DASH,
                t.DASH if r.batch is None else str(r.batch),
                *(numbers or (t.DASH,) * 4),
                t.rate(r.images_per_s),
                t.size(r.size_bytes),
                t.pct(r.agree_teacher),
                status,
            )
        )
    if few:
        notes.append(f"timings from fewer than {MIN_ITERS} iterations are unreliable (`--iters 200` for real figures)")
    if result and result.preprocess:
        notes.append(_preprocess_note(result))
    machine = (result.machine if result else {}) or {}
    threads = sorted({r.threads for r in (result.rows if result else []) if r.threads})
    caption = (
        f"ms per call, {machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} cores, threads "
        f"{','.join(map(str, threads)) or '-'}), torch {machine.get('torch', '?')}, onnxruntime "
        f"{machine.get('onnxruntime', '?')}" + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
    )
    columns = ("backend", "model", "prec", "batch", "p50", "p90", "p99", "mean ± std", "img/s", "size", "agree T")
    return TextTable(
        "Latency (host to host: uint8 images in, logits out)",
        (*columns, "status"),
        rows,
        caption,
        left=("backend", "model", "prec", "status"),
        notes=list(dict.fromkeys(notes)),
    )


def _spread(mean: float, std: float, iters: int) -> str:
    return f"{t.ms(mean)} (n=1)" if iters == 1 else f"{t.ms(mean)} ± {t.ms(std)}"


def run_bench(report: Report) -> TextTable:
    """The run's bench table with each artifact's state taken from its latest validation."""
    return bench(report.bench, failed_models(report))


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
