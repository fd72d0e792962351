"""Quantization-aware distillation (QAD): when post-training INT8 falls short of the gate, fine-tune the student's
weights for a few hundred steps through ONNX Runtime's own quantization (its Q/DQ model run as fake-quant, see
qdq_torch.py) to match the FP32 student's logits (KD), then quantize the tuned weights with the same setting.

The data are field images the gate never grades (the pool's tuning quarter, and any pool image beyond the gate's
sample); the step kept is the one closest to FP32 on those same images (mean KL of the class probabilities, not the
count of top-1 flips: a few hundred tuning images hold only a handful of flips, too few to rank steps by; measured on
the bundled example, picking by flips kept step 50 and graded 98.99%, picking by KL kept step 150 and graded
99.38%), so the gate's images neither train nor choose the model. The FP32 artifacts are untouched: the tuned FP32
model only lives in a work folder, and the INT8 model it yields is graded against the original student's logits
like any other candidate. The same fine-tune serves ONNX Runtime's INT8 model and the symmetric Q/DQ model for
TensorRT (each through its own quantization).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from eikd_edge.errors import EikdError
from eikd_edge.export.fieldset import FieldImages, decode_entries, folder_images, read_manifest, stratified
from eikd_edge.export.int8_candidates import QAD_SLOWDOWN, Candidate, agreement, interleaved_latency, run_logits
from eikd_edge.export.int8_settings import QuantSetting, quantize_one
from eikd_edge.export.qdq_torch import QDQModule
from eikd_edge.models.spec import InputSpec
from eikd_edge.ort_session import session as ort_session
from eikd_edge.run import RunPaths

STEPS = 300
BATCH = 64
LR = 1e-4
TEMPERATURE = 2.0
EVAL_EVERY = 25
MAX_IMAGES = 4096  # field images QAD trains on, at most
MAX_SHIFT = 2  # pixels: small translations multiply the few spare images without leaving the field distribution


@dataclass(frozen=True)
class QADRun:
    """What a fine-tune did, for export.json."""

    path: Path  # the tuned FP32 ONNX (work folder)
    steps: int
    best_step: int
    train_s: float
    images: int
    tuning_flips_before: int  # top-1 disagreements with FP32 on the QAD images, Q/DQ model as calibrated
    tuning_flips_after: int
    tuning_kl_before: float  # mean KL(FP32 || fake-quant) on the QAD images: what picks the step
    tuning_kl_after: float
    trace: tuple[tuple[int, float, int], ...] = ()  # (step, mean KL, flips) at every check, step 0 first
    temperature: float = TEMPERATURE
    lr: float = LR
    batch: int = BATCH

    def record(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "best_step": self.best_step,
            "train_s": round(self.train_s, 3),
            "images": self.images,
            "tuning_flips_before": self.tuning_flips_before,
            "tuning_flips_after": self.tuning_flips_after,
            "tuning_kl_before": round(self.tuning_kl_before, 8),
            "tuning_kl_after": round(self.tuning_kl_after, 8),
            "picked_by": "lowest mean KL to FP32 on the QAD images, every 25 steps",
            "trace": [[step, round(kl, 8), flips] for step, kl, flips in self.trace],
            "temperature": self.temperature,
            "lr": self.lr,
            "batch": self.batch,
            "loss": "KL(FP32 student || fake-quant student) at temperature T, times T^2",
        }


def distill_quantized(
    fp32: Path,
    qdq: Path,
    images: np.ndarray,
    out: Path,
    steps: int = STEPS,
    lr: float = LR,
    seed: int = 0,
    threads: int = 0,
) -> QADRun:
    """Fine-tune the weights of `fp32` through the quantization of `qdq` on normalised `images`; write the tuned FP32
    model to `out` (the step closest to FP32 on `images` by mean KL, step 0 when none helps)."""
    if len(images) == 0:
        raise EikdError("quantization-aware distillation needs field images that the gate does not grade; none left")
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        fp32_proto = onnx.load(str(fp32))
        teacher = QDQModule(fp32_proto, fp32_proto).eval()
        student = QDQModule(onnx.load(str(qdq)), fp32_proto).train()
        data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        with torch.no_grad():
            reference = _logits(teacher, data)
        optimizer = torch.optim.Adam(student.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        best = (_closeness(student, data, reference), 0, copy.deepcopy(student.state_dict()))
        before = best[0]
        trace = [(0, *before)]
        for step in range(1, steps + 1):
            x = _augment(data[torch.randint(0, len(data), (min(BATCH, len(data)),), generator=generator)], generator)
            with torch.no_grad():
                target = F.softmax(teacher(x) / TEMPERATURE, dim=1)
            loss = F.kl_div(F.log_softmax(student(x) / TEMPERATURE, dim=1), target, reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            (loss * TEMPERATURE**2).backward()
            optimizer.step()
            if step % EVAL_EVERY == 0 or step == steps:
                score = _closeness(student, data, reference)
                trace.append((step, *score))
                if score[0] < best[0][0]:
                    best = (score, step, copy.deepcopy(student.state_dict()))
        student.load_state_dict(best[2])
        write_weights(fp32_proto, student.fp32_weights(), out)
    finally:
        torch.set_num_threads(previous_threads)
    elapsed = time.perf_counter() - start
    return QADRun(out, steps, best[1], elapsed, len(images), before[1], best[0][1], before[0], best[0][0], tuple(trace))


def write_weights(proto: onnx.ModelProto, weights: dict[str, np.ndarray], out: Path) -> Path:
    """A copy of the FP32 model with some initializers replaced (same names, shapes and dtype)."""
    model = copy.deepcopy(proto)
    for tensor in model.graph.initializer:
        if tensor.name in weights:
            tensor.CopyFrom(numpy_helper.from_array(weights[tensor.name].astype(np.float32), tensor.name))
    onnx.save(model, str(out))
    return out


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random shift of the whole batch by up to MAX_SHIFT pixels (edges replicated)."""
    dy, dx = (int(v) for v in torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,), generator=generator))
    if dy == 0 and dx == 0:
        return x
    padded = F.pad(x, (MAX_SHIFT, MAX_SHIFT, MAX_SHIFT, MAX_SHIFT), mode="replicate")
    h, w = x.shape[2], x.shape[3]
    return padded[:, :, MAX_SHIFT + dy : MAX_SHIFT + dy + h, MAX_SHIFT + dx : MAX_SHIFT + dx + w]


@torch.no_grad()
def _logits(model: QDQModule, data: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model(data[i : i + batch]) for i in range(0, len(data), batch)])


@torch.no_grad()
def _closeness(model: QDQModule, data: torch.Tensor, reference: torch.Tensor) -> tuple[float, int]:
    """(mean KL, top-1 flips) against FP32; the KL ranks the steps."""
    logits = _logits(model, data)
    flips = int((logits.argmax(1) != reference.argmax(1)).sum())
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), reduction="batchmean", log_target=True)
    return float(kl), flips


def tuned_and_requantized(
    fp32: Path,
    qdq: Path,
    setting: QuantSetting,
    calib: np.ndarray,
    images: np.ndarray,
    work: Path,
    steps: int | None = None,
    threads: int = 0,
) -> tuple[Path, QADRun]:
    """Fine-tune through `qdq`'s quantization, then quantize the tuned weights with `setting` (calibrated afresh on
    `calib`): the INT8 model to grade, in `work`. Raises EikdError when there are no images to tune on."""
    tag = f"{'trt' if setting.qdq_pairs else 'ort'}-{setting.calibration}"
    run = distill_quantized(fp32, qdq, images, work / f"qad-fp32-{tag}.onnx", steps or STEPS, threads=threads)
    return quantize_one(run.path, work / f"qad-{tag}.onnx", setting, calib, None), run


def tuned_and_graded(
    fp32: Path,
    qdq: Path,
    setting: QuantSetting,
    calib: np.ndarray,
    images: np.ndarray | None,
    evaluation: np.ndarray,
    reference: np.ndarray,
    work: Path,
    steps: int | None,
    threads: int,
) -> tuple[Path | None, np.ndarray | None, dict[str, Any]]:
    """`tuned_and_requantized`, then graded on `evaluation` against the FP32 `reference` logits: (INT8 model, its
    logits, what to record). Without images to tune on, or when the fine-tune cannot run: (None, None, the reason)."""
    if images is None or len(images) == 0:
        return None, None, {"skipped": "no field images left that the gate does not grade"}
    try:
        path, run = tuned_and_requantized(fp32, qdq, setting, calib, images, work, steps, threads)
    except EikdError as exc:
        return None, None, {"skipped": str(exc)}
    logits = run_logits(ort_session(path, threads), evaluation)
    return path, logits, {**run.record(), "agree_fp32": agreement(logits, reference)}


@dataclass(frozen=True)
class TunedCandidate:
    candidate: Candidate | None  # None when QAD could not run (its record says why)
    path: Path | None
    record: dict[str, Any]


def qad_candidate(
    fp32: Path,
    results: list[Candidate],
    paths: list[Path],
    calib: np.ndarray,
    images: np.ndarray | None,
    evaluation: np.ndarray,
    reference: np.ndarray,
    gate: float,
    work: Path,
    threads: int,
    timing: tuple[ort.InferenceSession, np.ndarray, np.ndarray, float],
    steps: int | None = None,
) -> TunedCandidate:
    """QAD on the most faithful post-training setting no slower than QAD_SLOWDOWN x the fastest (a slow kernel is
    not worth rescuing), re-quantized with that setting and graded on the gate images against the original FP32
    logits (`reference`), with its latency measured beside FP32 like every other candidate."""
    fastest = min(c.latency_ms_batch for c in results)
    eligible = [i for i, c in enumerate(results) if c.latency_ms_batch <= QAD_SLOWDOWN * fastest]
    base = max(eligible, key=lambda i: (results[i].agree_fp32, -results[i].latency_ms_batch))
    setting = results[base].setting
    record: dict[str, Any] = {"base": setting.label, "base_agree_fp32": results[base].agree_fp32}
    path, logits, graded = tuned_and_graded(
        fp32, paths[base], setting, calib, images, evaluation, reference, work, steps, threads
    )
    record.update(graded)
    if path is None or logits is None:
        return TunedCandidate(None, None, record)
    agree = graded["agree_fp32"]
    tuned = ort_session(path, threads)
    fp32_session, x1, xb, budget_s = timing
    b1 = interleaved_latency([fp32_session, tuned], x1, budget_s / 4)[1]
    bn = interleaved_latency([fp32_session, tuned], xb, budget_s / 4)[1]
    dlogit = float(np.abs(logits - reference).max())
    candidate = Candidate(
        setting, b1, bn, len(xb), agree, dlogit, agree >= gate, method="qad", n_images=len(evaluation)
    )
    return TunedCandidate(candidate, path, record)


def spare_field_images(run: RunPaths, spec: InputSpec, graded: set[str], folder: Path | None) -> FieldImages | None:
    """The field images QAD may train on: every one the gate does not grade (the pool's tuning quarter, and any
    pool image beyond the gate's sample; with --images, that folder's images beyond the gate's sample). None when
    there are none."""
    if folder is not None:
        images = folder_images(folder, spec, MAX_IMAGES)
    else:
        root, entries = read_manifest(run)
        spare = stratified([e for e in entries if str(e["path"]) not in graded], MAX_IMAGES)
        if not spare:
            return None
        images = decode_entries(root, spare, spec, "spare", run)
    keep = [i for i, path in enumerate(images.paths) if path not in graded]
    if not keep:
        return None
    return FieldImages(
        images.images[keep], [images.paths[i] for i in keep], images.source, [images.predicted[i] for i in keep]
    )
