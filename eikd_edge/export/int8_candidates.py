"""One graded INT8 candidate (latency, agreement with FP32), how candidates are measured, and the rule that picks
one. Kept apart from quantize.py, which runs the whole choice, so QAD, mixed precision and the TensorRT Q/DQ path
grade the same way."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from eikd_edge.export.agreement import wilson_interval
from eikd_edge.export.int8_settings import QuantSetting
from eikd_edge.export.onnx import INPUT_NAME, OUTPUT_NAME


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
