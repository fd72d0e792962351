"""The INT8 settings ONNX Runtime's static quantizer is tried with, and one quantize_static call for a setting.
Kept apart from the choice (quantize.py) and the grading (int8_candidates.py): the QAD and TensorRT Q/DQ paths
quantize with the same call."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from eikd_edge.export.onnx import INPUT_NAME

CALIBRATION_BATCH = 16


PERCENTILE = 99.999


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
