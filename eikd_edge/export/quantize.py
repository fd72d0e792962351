"""ONNX Runtime static INT8 (QDQ): calibrate once on field images, try several settings, keep the fastest that
passes the parity gate against the FP32 model. Which setting is fastest depends on the CPU (VNNI or not, ARM
dot-product or not), so it is measured on the machine that exports, never assumed.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from eikd_edge.atomic import write_atomic
from eikd_edge.errors import EikdError
from eikd_edge.export.onnx import INPUT_NAME, OUTPUT_NAME

CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class QuantSetting:
    activation: str  # "u8" | "s8"
    weight: str = "s8"
    per_channel: bool = False
    reduce_range: bool = False
    symmetric_activation: bool = False
    quantize_bias: bool = True

    @property
    def label(self) -> str:
        name = f"{self.activation.upper()}{self.weight.upper()} {'per-channel' if self.per_channel else 'per-tensor'}"
        return (
            name + (" reduce-range" if self.reduce_range else "") + (" symmetric" if self.symmetric_activation else "")
        )


CANDIDATES: tuple[QuantSetting, ...] = (
    QuantSetting("u8", per_channel=False),
    QuantSetting("u8", per_channel=True),
    QuantSetting("u8", per_channel=True, reduce_range=True),  # the ORT advice for x86 without VNNI
    QuantSetting("s8", per_channel=False),
    QuantSetting("s8", per_channel=True),
)
# TensorRT explicit quantization accepts only symmetric INT8 (zero point 0) and float biases.
TRT_SETTING = QuantSetting("s8", per_channel=True, symmetric_activation=True, quantize_bias=False)


@dataclass(frozen=True)
class Candidate:
    setting: QuantSetting
    latency_ms_b1: float
    latency_ms_batch: float
    batch: int
    agree_fp32: float
    max_abs_dlogit: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.setting.label,
            **asdict(self.setting),
            **{k: v for k, v in asdict(self).items() if k != "setting"},
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

    def record(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "fp32": {"latency_ms_b1": self.fp32_latency_ms_b1, "latency_ms_batch": self.fp32_latency_ms_batch},
            "selection_rule": "fastest at the target's opt batch among candidates passing the gate vs FP32 ONNX",
            "calibration_images": self.calibration_images,
            "calibration_method": "MinMax",
        }


class _Reader(CalibrationDataReader):
    """Feeds normalised field images to the calibrator in small batches."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self._iter: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        batches = [self.images[i : i + CALIBRATION_BATCH] for i in range(0, len(self.images), CALIBRATION_BATCH)]
        self._iter = iter({INPUT_NAME: b} for b in batches)

    def __len__(self) -> int:
        return len(self.images)


def quantize_one(fp32: Path, out: Path, setting: QuantSetting, calib: np.ndarray, cache: Path | None) -> Path:
    """One quantize_static call; `cache` (when ORT supports it) makes every call after the first skip calibration."""
    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    kwargs: dict[str, Any] = {}
    if cache is not None and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        kwargs["calibration_cache_path"] = str(cache)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "consider pre-processing": measured, it does not help here (README)
    try:
        quantize_static(
            str(fp32),
            str(out),
            _Reader(calib),
            quant_format=QuantFormat.QDQ,
            per_channel=setting.per_channel,
            reduce_range=setting.reduce_range,
            activation_type=types[setting.activation],
            weight_type=types[setting.weight],
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=classifier_head_nodes(fp32),
            extra_options={
                "ActivationSymmetric": setting.symmetric_activation,
                "WeightSymmetric": True,
                "QuantizeBias": setting.quantize_bias,
            },
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


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
) -> QuantResult:
    """Quantize every candidate, measure latency and agreement with FP32, write the winner to `out` atomically."""
    if len(calib) == 0 or len(evaluation) == 0:
        raise EikdError("INT8 calibration needs field images; the run's selection has none decodable")
    start = time.perf_counter()
    reference = run_logits(session(fp32, threads), evaluation)
    x1, xb = evaluation[:1], _batch_of(evaluation, batch)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out.parent) as tmp:
        cache = Path(tmp) / "ranges.json"
        paths = [quantize_one(fp32, Path(tmp) / f"c{i}.onnx", s, calib, cache) for i, s in enumerate(candidates)]
        sessions = [session(fp32, threads)] + [session(p, threads) for p in paths]
        lat_b1 = interleaved_latency(sessions, x1, budget_s / 2)
        lat_bn = interleaved_latency(sessions, xb, budget_s / 2)
        results = []
        for i, setting in enumerate(candidates):
            logits = run_logits(sessions[i + 1], evaluation)
            agree = float((logits.argmax(1) == reference.argmax(1)).mean())
            dlogit = float(np.abs(logits - reference).max())
            results.append(Candidate(setting, lat_b1[i + 1], lat_bn[i + 1], len(xb), agree, dlogit, agree >= gate))
        passing = [c for c in results if c.passed]
        chosen = (
            min(passing, key=lambda c: c.latency_ms_batch)
            if passing
            else max(results, key=lambda c: (c.agree_fp32, -c.latency_ms_batch))
        )
        source = paths[candidates.index(chosen.setting)]
        write_atomic(out, lambda t: shutil.copyfile(source, t))
    return QuantResult(out, chosen, results, lat_b1[0], lat_bn[0], len(calib), time.perf_counter() - start)


def quantize_for_tensorrt(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    """The symmetric S8 QDQ model that TensorRT builds an INT8 engine from (explicit quantization, no calibrator)."""
    with tempfile.TemporaryDirectory(prefix=".int8-trt-", dir=out.parent) as tmp:
        built = quantize_one(fp32, Path(tmp) / "trt.onnx", TRT_SETTING, calib, None)
        write_atomic(out, lambda t: shutil.copyfile(built, t))
    return out


def _batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch])
