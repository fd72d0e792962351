"""Timing primitives shared by `eikd-edge bench` and the benchmark scripts: warm-up, timed calls under a time
budget, outlier-robust statistics, CUDA-event compute time and a description of the machine the numbers came from."""

from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict


class LatencyStats(BaseModel):
    """Milliseconds per call over the timed iterations."""

    model_config = ConfigDict(extra="forbid")
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float


@dataclass(frozen=True)
class Timing:
    samples_s: list[float]
    warmup: int
    budget_exhausted: bool
    elapsed_s: float


def time_calls(
    call: Callable[[], Any], warmup: int, iters: int, budget_s: float, clock: Callable[[], float] = time.perf_counter
) -> Timing:
    """Warm up, then time `iters` calls; stop early once `budget_s` is spent (at least one timed call always runs)."""
    start = clock()
    deadline = start + budget_s
    warm = 0
    while warm < warmup and clock() < deadline:
        call()
        warm += 1
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection in the middle of a call is the harness's noise, not the model's
    try:
        while len(samples) < iters and (not samples or clock() < deadline):
            t0 = clock()
            call()
            samples.append(clock() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(samples, warm, len(samples) < iters, clock() - start)


def latency_stats(samples_s: list[float]) -> LatencyStats:
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        mean=float(ms.mean()),
        std=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        min=float(ms.min()),
        max=float(ms.max()),
    )


@torch.inference_mode()
def cuda_compute(model: torch.nn.Module, x: torch.Tensor, iters: int) -> LatencyStats:
    """Device time of `model(x)` alone, from CUDA events (x already on the GPU and preprocessed)."""
    samples = []
    for _ in range(max(iters, 1)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1000.0)
    return latency_stats(samples)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """Enough to tell two bench.json files apart: CPU, cores, library versions, GPU."""
    import onnxruntime

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "ort_providers": onnxruntime.get_available_providers(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
