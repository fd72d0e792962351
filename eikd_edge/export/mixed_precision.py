"""Mixed precision for INT8: when no setting passes the gate, layer-wise sensitivity (leave one out, on the
calibration images) finds the few nodes whose quantization costs most and keeps them in FP32. Kept apart from
quantize.py: the TensorRT Q/DQ path uses it too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eikd_edge.export.int8_candidates import agreement, run_logits
from eikd_edge.export.int8_settings import QuantSetting, classifier_head_nodes, quantize_one
from eikd_edge.ort_session import session

MAX_FP32_NODES = 4  # mixed precision beyond this is no longer an INT8 model worth shipping
# Op types ONNX Runtime's QDQ quantizer wraps that can be kept in FP32 one at a time.
SENSITIVE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "GlobalAveragePool", "AveragePool", "Concat")


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
