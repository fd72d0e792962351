"""ONNX Runtime static INT8 (QDQ): calibrate on field images, try several settings, keep the fastest that
passes the parity gate against the FP32 model. Which setting is fastest depends on the CPU (VNNI or not, ARM
dot-product or not), so it is measured on the machine that exports, never assumed.

When no setting passes, layer-wise sensitivity finds the few nodes whose quantization costs most (leave one out,
measured on the calibration images, not on the gate's images) and keeps them in FP32 (mixed precision), one more
at a time, until the gate passes or MAX_FP32_NODES are excluded. The record names them either way.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eikd_edge.atomic import write_atomic
from eikd_edge.errors import EikdError
from eikd_edge.export.int8_candidates import (
    QAD_MODES,
    SELECTION_RULE,
    Candidate,
    agreement,
    interleaved_latency,
    qad_trigger,
    run_logits,
    select,
)
from eikd_edge.export.int8_settings import CANDIDATES, QuantSetting, quantize_one
from eikd_edge.export.mixed_precision import MAX_FP32_NODES, MixedPrecision, keep_sensitive_in_fp32
from eikd_edge.ort_session import session


@dataclass(frozen=True)
class QuantResult:
    path: Path
    chosen: Candidate
    candidates: list[Candidate]
    fp32_latency_ms_b1: float
    fp32_latency_ms_batch: float
    calibration_images: int
    build_s: float
    evaluation_images: int = 0
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # ranked nodes, when no setting passed as is
    qad: dict[str, Any] | None = None  # what quantization-aware distillation did, when it ran

    def record(self) -> dict[str, Any]:
        return {
            "method": self.chosen.method,
            "chosen": self.chosen.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "fp32": {"latency_ms_b1": self.fp32_latency_ms_b1, "latency_ms_batch": self.fp32_latency_ms_batch},
            "faster_than_fp32": self.faster_than_fp32,
            "selection_rule": SELECTION_RULE,
            "qad": self.qad,
            "calibration_images": self.calibration_images,
            "calibration_method": self.chosen.setting.calibration,
            "evaluation_images": self.evaluation_images,
            "fp32_nodes": list(self.chosen.fp32_nodes),
            "sensitivity": self.sensitivity,
        }

    @property
    def faster_than_fp32(self) -> bool:
        """At the target's opt batch on this machine. An INT8 model that is not faster is never the recommended
        artifact: it only costs agreement (ORT's INT8 kernels lose to FP32 on CPUs without VNNI / dot-product)."""
        return self.chosen.latency_ms_batch < self.fp32_latency_ms_batch

    def advice(self) -> str | None:
        """What the user can try when even the sensitivity pass did not reach the gate."""
        if self.chosen.passed:
            return None
        worst = ", ".join(s["node"] for s in self.sensitivity[:MAX_FP32_NODES]) or "none found"
        return (
            f"nodes that cost most when quantized (kept FP32, still short): {worst}; try --calib-images "
            f"{max(2 * self.calibration_images, 512)}, a lower --gate, or keep this model in FP32 (student.onnx)"
        )


def choose_int8(
    fp32: Path,
    out: Path,
    calib: np.ndarray,
    evaluation: np.ndarray,
    gate: float,
    batch: int = 8,
    threads: int = 0,
    budget_s: float = 1.0,
    candidates: tuple[QuantSetting, ...] = CANDIDATES,
    qad: str = "auto",
    qad_images: Callable[[], np.ndarray | None] | None = None,
    qad_steps: int | None = None,
    reference: np.ndarray | None = None,
) -> QuantResult:
    """Quantize every candidate, measure latency and agreement with FP32, write the winner to `out` atomically.
    When `qad_trigger` says so (or `qad` is "always"), fine-tune through the quantization on `qad_images()` (never
    the gate's images; decoded only then) and grade that too; when still none passes, keep the most sensitive
    nodes of the most faithful one in FP32 until it does."""
    if len(calib) == 0 or len(evaluation) == 0:
        raise EikdError("INT8 calibration needs field images; the run's selection has none decodable")
    start = time.perf_counter()
    if qad not in QAD_MODES:
        raise EikdError(f"--qad must be one of {', '.join(QAD_MODES)}, got {qad!r}")
    if reference is None:  # the FP32 model's logits on `evaluation`, when the caller has not computed them
        reference = run_logits(session(fp32, threads), evaluation)
    x1, xb = evaluation[:1], _batch_of(evaluation, batch)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out.parent) as tmp:
        g = _Grading(fp32, calib, evaluation, reference, gate, Path(tmp), threads, budget_s, x1, xb)
        _grade(g, candidates)
        n = len(evaluation)
        trigger = "requested" if qad == "always" else qad_trigger(g.results, gate, n) if qad == "auto" else None
        qad_record = _add_qad(g, trigger, qad_images, qad_steps) if trigger is not None else None
        chosen, source, sensitivity = _choose(g, len(candidates))
        write_atomic(out, lambda t: shutil.copyfile(source, t))
    elapsed = time.perf_counter() - start
    return QuantResult(
        out, chosen, g.results, g.lat_b1[0], g.lat_bn[0], len(calib), elapsed, len(evaluation), sensitivity, qad_record
    )


@dataclass
class _Grading:
    """What choose_int8's steps share: its inputs, the work folder, the sessions (FP32 first) and the graded
    candidates with the file each was written to."""

    fp32: Path
    calib: np.ndarray
    evaluation: np.ndarray
    reference: np.ndarray
    gate: float
    cache: Path
    threads: int
    budget_s: float
    x1: np.ndarray
    xb: np.ndarray
    paths: list[Path] = field(default_factory=list)
    sessions: list[Any] = field(default_factory=list)
    lat_b1: list[float] = field(default_factory=list)
    lat_bn: list[float] = field(default_factory=list)
    results: list[Candidate] = field(default_factory=list)
    sources: dict[int, Path] = field(default_factory=dict)


def _grade(g: _Grading, candidates: tuple[QuantSetting, ...]) -> None:
    """Quantize every candidate setting, time them interleaved with FP32 and grade each against the reference."""
    g.paths = [quantize_one(g.fp32, g.cache / f"c{i}.onnx", s, g.calib, g.cache) for i, s in enumerate(candidates)]
    g.sessions = [session(g.fp32, g.threads)] + [session(p, g.threads) for p in g.paths]
    g.lat_b1 = interleaved_latency(g.sessions, g.x1, g.budget_s / 2)
    g.lat_bn = interleaved_latency(g.sessions, g.xb, g.budget_s / 2)
    n = len(g.evaluation)
    for i, setting in enumerate(candidates):
        logits = run_logits(g.sessions[i + 1], g.evaluation)
        agree = agreement(logits, g.reference)
        dlogit = float(np.abs(logits - g.reference).max())
        g.results.append(
            Candidate(setting, g.lat_b1[i + 1], g.lat_bn[i + 1], len(g.xb), agree, dlogit, agree >= g.gate, n_images=n)
        )
    g.sources = {id(c): p for c, p in zip(g.results, g.paths, strict=True)}


def _add_qad(
    g: _Grading, trigger: str, qad_images: Callable[[], np.ndarray | None] | None, qad_steps: int | None
) -> dict[str, Any]:
    """Quantization-aware distillation as one more candidate; what it did, for the record."""
    from eikd_edge.export.qad import qad_candidate

    spare = qad_images() if qad_images else None
    tuned = qad_candidate(
        g.fp32, g.results, g.paths, g.calib, spare, g.evaluation, g.reference, g.gate, g.cache, g.threads,
        (g.sessions[0], g.x1, g.xb, g.budget_s), qad_steps,
    )  # fmt: skip
    qad_record = {"trigger": trigger, **tuned.record}
    if tuned.candidate is not None:
        g.results.append(tuned.candidate)
        g.sources[id(tuned.candidate)] = tuned.path
    return qad_record


def _choose(g: _Grading, n_ptq: int) -> tuple[Candidate, Path, list[dict[str, Any]]]:
    """The chosen candidate, its file and the sensitivity ranking (empty unless the mixed-precision pass ran)."""
    passing = [c for c in g.results if c.passed]
    if passing:
        chosen = select(passing, g.gate)
        return chosen, g.sources[id(chosen)], []
    best = max(g.results, key=lambda c: (c.agree_fp32, -c.latency_ms_batch))
    ptq_best = max(g.results[:n_ptq], key=lambda c: (c.agree_fp32, -c.latency_ms_batch))
    mixed = keep_sensitive_in_fp32(
        g.fp32, ptq_best.setting, g.calib, g.evaluation, g.reference, g.gate, g.cache, g.threads
    )
    if mixed.agree > best.agree_fp32:
        return _mixed_candidate(g, ptq_best.setting, mixed), mixed.path, mixed.ranking
    return best, g.sources[id(best)], mixed.ranking


def _mixed_candidate(g: _Grading, setting: QuantSetting, mixed: MixedPrecision) -> Candidate:
    """The mixed-precision model timed against FP32 and graded like the others; added to the results."""
    mixed_session = session(mixed.path, g.threads)
    b1 = interleaved_latency([g.sessions[0], mixed_session], g.x1, g.budget_s / 4)[1]
    bn = interleaved_latency([g.sessions[0], mixed_session], g.xb, g.budget_s / 4)[1]
    dlogit = float(np.abs(run_logits(mixed_session, g.evaluation) - g.reference).max())
    chosen = Candidate(
        setting, b1, bn, len(g.xb), mixed.agree, dlogit, mixed.agree >= g.gate, mixed.excluded,
        n_images=len(g.evaluation),
    )  # fmt: skip
    g.results.append(chosen)
    return chosen


def _batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch])
