"""ONNX Runtime static INT8 (QDQ): calibrate on field images, try several settings, keep the fastest that
passes the parity gate against the FP32 model. Which setting is fastest depends on the CPU (VNNI or not, ARM
dot-product or not), so it is measured on the machine that exports, never assumed.

When no setting passes, layer-wise sensitivity finds the few nodes whose quantization costs most (leave one out,
measured on the calibration images, not on the gate's images) and keeps them in FP32 (mixed precision), one more
at a time, until the gate passes or MAX_FP32_NODES are excluded. The record names them either way.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from eikd_edge.atomic import write_atomic
from eikd_edge.errors import EikdError
from eikd_edge.export.agreement import wilson_interval
from eikd_edge.export.onnx import INPUT_NAME, OUTPUT_NAME
from eikd_edge.ort_session import session

CALIBRATION_BATCH = 16
MAX_FP32_NODES = 4  # mixed precision beyond this is no longer an INT8 model worth shipping
PERCENTILE = 99.999
# Op types ONNX Runtime's QDQ quantizer wraps that can be kept in FP32 one at a time.
SENSITIVE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "GlobalAveragePool", "AveragePool", "Concat")
_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


@dataclass(frozen=True)
class QuantSetting:
    activation: str  # "u8" | "s8"
    weight: str = "s8"
    per_channel: bool = False
    reduce_range: bool = False
    symmetric_activation: bool = False
    quantize_bias: bool = True
    calibration: str = "minmax"  # minmax | percentile | entropy
    # TensorRT: Q->DQ pairs on FP32 weights, one DQ per consumer (AddQDQPairToWeight, DedicatedQDQPair)
    qdq_pairs: bool = False

    @property
    def label(self) -> str:
        name = f"{self.activation.upper()}{self.weight.upper()} {'per-channel' if self.per_channel else 'per-tensor'}"
        return (
            name
            + (" reduce-range" if self.reduce_range else "")
            + (" symmetric" if self.symmetric_activation else "")
            + (f" {self.calibration}" if self.calibration != "minmax" else "")
        )


CANDIDATES: tuple[QuantSetting, ...] = (
    QuantSetting("u8", per_channel=False),
    QuantSetting("u8", per_channel=True),
    QuantSetting("u8", per_channel=True, reduce_range=True),  # the ORT advice for x86 without VNNI
    QuantSetting("s8", per_channel=False),
    QuantSetting("s8", per_channel=True),
    QuantSetting("u8", per_channel=True, calibration="percentile"),  # clips rare outliers: finer steps elsewhere
    QuantSetting("s8", per_channel=True, calibration="percentile"),
    QuantSetting("u8", per_channel=True, calibration="entropy"),
)


@dataclass(frozen=True)
class Candidate:
    setting: QuantSetting
    latency_ms_b1: float
    latency_ms_batch: float
    batch: int
    agree_fp32: float
    max_abs_dlogit: float
    passed: bool
    fp32_nodes: tuple[str, ...] = ()  # kept in FP32 by the sensitivity pass
    method: str = "ptq"  # ptq | qad (weights fine-tuned through this setting's quantization first)
    n_images: int = 0  # the gate images agree_fp32 was measured on

    @property
    def wilson(self) -> tuple[float, float]:
        return wilson_interval(round(self.agree_fp32 * self.n_images), self.n_images)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.wilson
        return {
            "label": self.setting.label + (" QAD" if self.method == "qad" else ""),
            **asdict(self.setting),
            **{k: v for k, v in asdict(self).items() if k != "setting"},
            "agree_fp32_wilson95": [round(low, 6), round(high, 6)],
        }


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


class _Reader(CalibrationDataReader):
    """Feeds normalised field images to the calibrator in small batches."""

    def __init__(self, images: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self.images = images
        self.batch = batch
        self._iter: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        batches = [self.images[i : i + self.batch] for i in range(0, len(self.images), self.batch)]
        self._iter = iter({INPUT_NAME: b} for b in batches)

    def __len__(self) -> int:
        return len(self.images)


def quantize_one(
    fp32: Path,
    out: Path,
    setting: QuantSetting,
    calib: np.ndarray,
    cache: Path | None,
    exclude: tuple[str, ...] = (),
) -> Path:
    """One quantize_static call; `cache` (a folder; when ORT supports it) holds each calibration method's ranges, so
    every call after the first with that method skips calibration. `exclude` names nodes kept in FP32."""
    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    kwargs: dict[str, Any] = {}
    if cache is not None and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        kwargs["calibration_cache_path"] = str(cache / f"ranges-{setting.calibration}.json")
    extra: dict[str, Any] = {
        "ActivationSymmetric": setting.symmetric_activation,
        "WeightSymmetric": True,
        "QuantizeBias": setting.quantize_bias,
        "CalibPercentile": PERCENTILE,
    }
    if setting.qdq_pairs:
        extra.update(AddQDQPairToWeight=True, DedicatedQDQPair=True, QDQOpTypePerChannelSupportToAxis={"MatMul": 1})
    # ORT's histogram calibrators (percentile, entropy) stack each tensor's batches: they must all be one size.
    reader = _Reader(calib, CALIBRATION_BATCH if setting.calibration == "minmax" else 1)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "consider pre-processing": measured, it does not help here (README)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            quantize_static(
                str(fp32),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=setting.per_channel,
                reduce_range=setting.reduce_range,
                activation_type=types[setting.activation],
                weight_type=types[setting.weight],
                calibrate_method=_METHODS[setting.calibration],
                nodes_to_exclude=classifier_head_nodes(fp32) + list(exclude),
                extra_options=extra,
                **kwargs,
            )
    finally:
        logging.disable(previous)
    return out


def classifier_head_nodes(fp32: Path) -> list[str]:
    """The node(s) writing the logits stay FP32: quantizing the final layer flips the most top-1 decisions
    (measured on the bundled example: 98.9% -> see export/README.md) for a negligible share of the MACs."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    return [node.name for node in graph.node if node.name and outputs & set(node.output)]


def run_logits(sess: ort.InferenceSession, images: np.ndarray, batch: int = 64) -> np.ndarray:
    parts = [sess.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(parts).astype(np.float32)


def interleaved_latency(
    sessions: list[ort.InferenceSession], x: np.ndarray, budget_s: float, rounds: int = 3
) -> list[float]:
    """Median ms per call, measured in short blocks that rotate over the sessions, so a noisy machine hits every
    candidate alike. Blocks, not single calls: a session's idle thread pool keeps spinning for a moment and
    would slow the next session's call (measured: single-call interleaving gave 30x outliers on 2 cores)."""
    for sess in sessions:  # warm-up: first runs allocate memory and pick kernels
        for _ in range(3):
            sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    block = budget_s / (rounds * len(sessions))
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for index, sess in enumerate(sessions):
            end = time.perf_counter() + block
            calls = 0
            while calls < 3 or time.perf_counter() < end:
                start = time.perf_counter()
                sess.run([OUTPUT_NAME], {INPUT_NAME: x})
                times[index].append((time.perf_counter() - start) * 1e3)
                calls += 1
    return [statistics.median(t) for t in times]


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    return float((logits.argmax(1) == reference.argmax(1)).mean())


SELECTION_RULE = (
    "among candidates passing the gate vs the FP32 ONNX: the fastest at the target's opt batch whose 95% Wilson "
    "lower bound also clears the gate, else the fastest; if none passes (post-training), quantization-aware "
    "distillation of the most faithful setting no slower than 1.5x the fastest; if that fails too, the most "
    "faithful with its most sensitive nodes kept in FP32"
)
QAD_MODES = ("auto", "always", "never")
QAD_SLOWDOWN = 1.5  # a QAD base setting may be this much slower than the fastest candidate, no more


def select(passing: list[Candidate], gate: float) -> Candidate:
    """The fastest candidate whose Wilson lower bound clears the gate (it would pass on most samples, so on
    another machine's timings too), else the fastest that passes."""
    robust = [c for c in passing if c.wilson[0] >= gate]
    return min(robust or passing, key=lambda c: c.latency_ms_batch)


def qad_trigger(results: list[Candidate], gate: float, n_images: int) -> str | None:
    """Why quantization-aware distillation should run in "auto" mode, or None. It runs when no post-training
    setting passes, and also when one passes only by a hair (no Wilson lower bound clears the gate) on a sample large
    enough for a lower bound to clear it at all (about 380 images at a 0.99 gate): a pass by a hair is one that
    another machine's kernels can turn into a failure."""
    shortfall = short_of_sound([c.agree_fp32 for c in results], gate, n_images)
    if shortfall == "failed":
        return "no post-training setting passed the gate"
    if shortfall == "by_a_hair":
        return "post-training settings pass the gate only by a hair (no 95% lower bound clears it)"
    return None


def short_of_sound(agreements: list[float], gate: float, n_images: int) -> str | None:
    """Why these agreements are not a sound pass: "failed" when none reaches the gate, "by_a_hair" when some do but
    none with a 95% Wilson lower bound that clears it on a sample where one could; None for a sound pass."""
    if not any(a >= gate for a in agreements):
        return "failed"
    if wilson_interval(n_images, n_images)[0] < gate:
        return None
    sound = any(a >= gate and wilson_interval(round(a * n_images), n_images)[0] >= gate for a in agreements)
    return None if sound else "by_a_hair"


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


@dataclass(frozen=True)
class MixedPrecision:
    path: Path
    agree: float  # on the evaluation (gate) images
    excluded: tuple[str, ...]
    ranking: list[dict[str, Any]]


def keep_sensitive_in_fp32(
    fp32: Path,
    setting: QuantSetting,
    calib: np.ndarray,
    evaluation: np.ndarray,
    reference: np.ndarray,
    gate: float,
    work: Path,
    threads: int = 0,
) -> MixedPrecision:
    """Rank nodes on the calibration (tuning) images, pick how many of the top ones to keep in FP32 on those same
    images (fewest flips, then lowest KL), and only then measure the pick once on the gate images: the images that
    grade the model never choose it. `gate` is not used to choose; it is kept for the caller's record."""
    del gate
    tuning_ref = run_logits(session(fp32, threads), calib)
    ranking = rank_sensitive_nodes(fp32, setting, calib, work, threads, tuning_ref)
    best: tuple[tuple[int, float], tuple[str, ...], Path] | None = None
    for k in range(1, min(MAX_FP32_NODES, len(ranking)) + 1):
        excluded = tuple(r["node"] for r in ranking[:k])
        path = quantize_one(fp32, work / f"mixed{k}.onnx", setting, calib, work, excluded)
        score = _closeness(tuning_ref, run_logits(session(path, threads), calib))
        if best is None or score < best[0]:
            best = (score, excluded, path)
    if best is None:
        return MixedPrecision(fp32, -1.0, (), ranking)
    agree = agreement(run_logits(session(best[2], threads), evaluation), reference)
    return MixedPrecision(best[2], agree, best[1], ranking)


def rank_sensitive_nodes(
    fp32: Path,
    setting: QuantSetting,
    calib: np.ndarray,
    work: Path,
    threads: int = 0,
    reference: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Leave-one-out: for each quantizable node, the INT8 model with only that node in FP32, compared with FP32 on
    the calibration images (top-1 flips, then mean KL of the class probabilities). Fewest first = most costly."""
    if reference is None:
        reference = run_logits(session(fp32, threads), calib)
    scores = []
    for i, node in enumerate(sensitive_nodes(fp32)):
        path = quantize_one(fp32, work / f"loo{i}.onnx", setting, calib, work, (node,))
        flips, kl = _closeness(reference, run_logits(session(path, threads), calib))
        scores.append({"node": node, "flips_without_it": flips, "kl_without_it": round(kl, 8)})
        path.unlink()
    return sorted(scores, key=lambda s: (s["flips_without_it"], s["kl_without_it"]))


def _closeness(reference: np.ndarray, logits: np.ndarray) -> tuple[int, float]:
    return int((logits.argmax(1) != reference.argmax(1)).sum()), _mean_kl(reference, logits)


def sensitive_nodes(fp32: Path) -> list[str]:
    import onnx

    head = set(classifier_head_nodes(fp32))
    graph = onnx.load(str(fp32), load_external_data=False).graph
    return [n.name for n in graph.node if n.name and n.op_type in SENSITIVE_OPS and n.name not in head]


def _mean_kl(reference: np.ndarray, logits: np.ndarray) -> float:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        shifted = x - x.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    p_log, q_log = log_softmax(reference.astype(np.float64)), log_softmax(logits.astype(np.float64))
    return float((np.exp(p_log) * (p_log - q_log)).sum(axis=1).mean())


def _batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch])
