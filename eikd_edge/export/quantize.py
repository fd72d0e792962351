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
from eikd_edge.export.mixed_precision import MAX_FP32_NODES, keep_sensitive_in_fp32
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
    n = len(evaluation)
    x1, xb = evaluation[:1], _batch_of(evaluation, batch)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out.parent) as tmp:
        cache = Path(tmp)
        paths = [quantize_one(fp32, cache / f"c{i}.onnx", s, calib, cache) for i, s in enumerate(candidates)]
        sessions = [session(fp32, threads)] + [session(p, threads) for p in paths]
        lat_b1 = interleaved_latency(sessions, x1, budget_s / 2)
        lat_bn = interleaved_latency(sessions, xb, budget_s / 2)
        results = []
        for i, setting in enumerate(candidates):
            logits = run_logits(sessions[i + 1], evaluation)
            agree = agreement(logits, reference)
            dlogit = float(np.abs(logits - reference).max())
            results.append(
                Candidate(setting, lat_b1[i + 1], lat_bn[i + 1], len(xb), agree, dlogit, agree >= gate, n_images=n)
            )
        sources = {id(c): p for c, p in zip(results, paths, strict=True)}
        qad_record = None
        trigger = "requested" if qad == "always" else qad_trigger(results, gate, n) if qad == "auto" else None
        if trigger is not None:
            from eikd_edge.export.qad import qad_candidate

            spare = qad_images() if qad_images else None
            tuned = qad_candidate(
                fp32, results, paths, calib, spare, evaluation, reference, gate, cache, threads,
                (sessions[0], x1, xb, budget_s), qad_steps,
            )  # fmt: skip
            qad_record = {"trigger": trigger, **tuned.record}
            if tuned.candidate is not None:
                results.append(tuned.candidate)
                sources[id(tuned.candidate)] = tuned.path
        passing = [c for c in results if c.passed]
        sensitivity: list[dict[str, Any]] = []
        if passing:
            chosen = select(passing, gate)
            source = sources[id(chosen)]
        else:
            best = max(results, key=lambda c: (c.agree_fp32, -c.latency_ms_batch))
            ptq_best = max(results[: len(candidates)], key=lambda c: (c.agree_fp32, -c.latency_ms_batch))
            mixed = keep_sensitive_in_fp32(fp32, ptq_best.setting, calib, evaluation, reference, gate, cache, threads)
            sensitivity = mixed.ranking
            chosen, source = best, sources[id(best)]
            if mixed.agree > best.agree_fp32:
                mixed_session = session(mixed.path, threads)
                b1 = interleaved_latency([sessions[0], mixed_session], x1, budget_s / 4)[1]
                bn = interleaved_latency([sessions[0], mixed_session], xb, budget_s / 4)[1]
                dlogit = float(np.abs(run_logits(mixed_session, evaluation) - reference).max())
                chosen = Candidate(
                    ptq_best.setting, b1, bn, len(xb), mixed.agree, dlogit, mixed.agree >= gate, mixed.excluded,
                    n_images=n,
                )  # fmt: skip
                results.append(chosen)
                source = mixed.path
        write_atomic(out, lambda t: shutil.copyfile(source, t))
    elapsed = time.perf_counter() - start
    return QuantResult(
        out, chosen, results, lat_b1[0], lat_bn[0], len(calib), elapsed, len(evaluation), sensitivity, qad_record
    )


def _batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch])
