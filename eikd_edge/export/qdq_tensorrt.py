"""The symmetric Q/DQ model TensorRT builds an INT8 engine from (student.int8.trt.onnx): explicit quantization, no
calibrator, in the layout of NVIDIA's ORT -> TensorRT recipe, graded against FP32 and, when it falls short, fine-tuned
(QAD) or kept partly in FP32 like ONNX Runtime's INT8 model (quantize.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from eikd_edge.atomic import write_atomic
from eikd_edge.export.agreement import wilson_interval
from eikd_edge.export.int8_candidates import agreement, run_logits, short_of_sound
from eikd_edge.export.int8_settings import QuantSetting, quantize_one
from eikd_edge.export.mixed_precision import keep_sensitive_in_fp32
from eikd_edge.ort_session import session

# TensorRT explicit quantization accepts only symmetric INT8 (zero point 0) and float biases; the Q/DQ layout is
# the one NVIDIA's ORT -> TensorRT recipe uses (weights as FP32 behind a Q->DQ pair, no DQ shared by two consumers).
TRT_SETTING = QuantSetting("s8", per_channel=True, symmetric_activation=True, quantize_bias=False, qdq_pairs=True)
# Symmetric ranges waste half the levels on a ReLU's output, so clipping rare outliers (percentile) often helps;
# which one is more faithful is measured for each model, as among ONNX Runtime's candidates.
TRT_CALIBRATIONS = ("minmax", "percentile")


@dataclass(frozen=True)
class TensorRTQDQ:
    path: Path
    fp32_nodes: tuple[str, ...]
    ranking: list[dict[str, Any]]
    qad: dict[str, Any] | None = None  # what quantization-aware distillation did, when it ran
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every graded model, the chosen one marked


def quantize_for_tensorrt(
    fp32: Path,
    out: Path,
    calib: np.ndarray,
    evaluation: np.ndarray | None = None,
    gate: float = 0.0,
    threads: int = 0,
    qad: str = "auto",
    qad_images: Callable[[], np.ndarray | None] | None = None,
    qad_steps: int | None = None,
    reference: np.ndarray | None = None,
) -> TensorRTQDQ:
    """The symmetric S8 Q/DQ model that TensorRT builds an INT8 engine from (explicit quantization, no calibrator).
    With `evaluation` images, each of TRT_CALIBRATIONS is graded against FP32 and, as for ONNX Runtime's INT8
    model, fine-tuned through its own quantization when none passes soundly (`qad`, on `qad_images()`, never the
    graded images); the most faithful candidate is kept, as among ORT's candidates; still below `gate`, its most
    sensitive nodes are kept in FP32."""
    with tempfile.TemporaryDirectory(prefix=".int8-trt-", dir=out.parent) as tmp:
        work = Path(tmp)
        graded_here = evaluation is not None and len(evaluation) > 0
        methods = TRT_CALIBRATIONS if graded_here else TRT_CALIBRATIONS[:1]  # ungraded: nothing to choose between
        settings = [replace(TRT_SETTING, calibration=method) for method in methods]
        paths = [quantize_one(fp32, work / f"trt-{s.calibration}.onnx", s, calib, work) for s in settings]
        built, excluded, ranking, qad_record = paths[0], (), [], None
        graded: list[_TensorRTCandidate] = []
        if evaluation is not None and graded_here:
            n = len(evaluation)
            if reference is None:  # the FP32 model's logits on `evaluation`, when the caller has not computed them
                reference = run_logits(session(fp32, threads), evaluation)
            graded = [
                _TensorRTCandidate(s, "ptq", agreement(run_logits(session(p, threads), evaluation), reference), n, p)
                for s, p in zip(settings, paths, strict=True)
            ]
            shortfall = short_of_sound([c.agree for c in graded], gate, n)
            trigger = "requested" if qad == "always" else _TRT_TRIGGERS.get(shortfall) if qad == "auto" else None
            if trigger is not None:
                runs = [
                    _tensorrt_qad(fp32, c, calib, qad_images, evaluation, reference, work, threads, qad_steps)
                    for c in list(graded)
                ]
                graded += [c for c, _ in runs if c is not None]
                qad_record = _tensorrt_qad_record(trigger, runs)
            best = max(graded, key=lambda c: c.agree)  # ties: the first, post-training minmax
            built = best.path
            if best.agree < gate:
                built, excluded, ranking = _mixed(fp32, graded, best, calib, evaluation, reference, gate, work, threads)
        write_atomic(out, lambda t: shutil.copyfile(built, t))
    candidates = [c.to_dict(c.path == built) for c in graded]
    return TensorRTQDQ(out, excluded, ranking, qad_record, candidates)


@dataclass(frozen=True)
class _TensorRTCandidate:
    setting: QuantSetting
    method: str  # ptq | qad
    agree: float  # with FP32 on the graded images
    n_images: int
    path: Path
    fp32_nodes: tuple[str, ...] = ()

    def to_dict(self, chosen: bool) -> dict[str, Any]:
        low, high = wilson_interval(round(self.agree * self.n_images), self.n_images)
        label = self.setting.label + (" QAD" if self.method == "qad" else "")
        return {
            "label": label + (f" + {len(self.fp32_nodes)} nodes FP32" if self.fp32_nodes else ""),
            "calibration": self.setting.calibration,
            "method": self.method,
            "agree_fp32": self.agree,
            "agree_fp32_wilson95": [round(low, 6), round(high, 6)],
            "fp32_nodes": list(self.fp32_nodes),
            "chosen": chosen,
        }


def _mixed(
    fp32: Path,
    graded: list[_TensorRTCandidate],
    best: _TensorRTCandidate,
    calib: np.ndarray,
    evaluation: np.ndarray,
    reference: np.ndarray,
    gate: float,
    work: Path,
    threads: int,
) -> tuple[Path, tuple[str, ...], list[dict[str, Any]]]:
    """Below the gate: the most faithful post-training setting with its most sensitive nodes kept in FP32, kept (and
    added to `graded`) when it agrees more than `best`; the file to keep, its FP32 nodes and the sensitivity ranking."""
    base = max((c for c in graded if c.method == "ptq"), key=lambda c: c.agree)
    mixed = keep_sensitive_in_fp32(fp32, base.setting, calib, evaluation, reference, gate, work, threads)
    if mixed.agree > best.agree:
        n = len(evaluation)
        graded.append(_TensorRTCandidate(base.setting, "ptq", mixed.agree, n, mixed.path, mixed.excluded))
        return mixed.path, mixed.excluded, mixed.ranking
    return best.path, (), mixed.ranking


def _tensorrt_qad_record(trigger: str, runs: list[tuple[_TensorRTCandidate | None, dict[str, Any]]]) -> dict[str, Any]:
    """The most faithful fine-tune, in the fields of ORT's QAD record, and every run."""
    done = [(c, r) for c, r in runs if c is not None]
    _, record = max(done, key=lambda item: item[0].agree) if done else runs[0]
    return {"trigger": trigger, **record, "runs": [r for _, r in runs]}


_TRT_TRIGGERS = {
    "failed": "no post-training Q/DQ model passed the gate",
    "by_a_hair": "post-training Q/DQ models pass the gate only by a hair (no 95% lower bound clears it)",
}


def _tensorrt_qad(
    fp32: Path,
    base: _TensorRTCandidate,
    calib: np.ndarray,
    qad_images: Callable[[], np.ndarray | None] | None,
    evaluation: np.ndarray,
    reference: np.ndarray,
    work: Path,
    threads: int,
    steps: int | None,
) -> tuple[_TensorRTCandidate | None, dict[str, Any]]:
    """`base` fine-tuned through its own quantization and graded (None when it could not run), and its record."""
    from eikd_edge.export.qad import tuned_and_graded

    record: dict[str, Any] = {"base": base.setting.label, "base_agree_fp32": base.agree}
    images = qad_images() if qad_images else None
    path, _, graded = tuned_and_graded(
        fp32, base.path, base.setting, calib, images, evaluation, reference, work, steps, threads
    )
    if path is None:
        return None, {**record, **graded}
    tuned = _TensorRTCandidate(base.setting, "qad", graded["agree_fp32"], len(evaluation), path)
    return tuned, {**record, **graded}
