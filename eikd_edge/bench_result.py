"""RUN/bench.json's schema: one row per model, backend and batch size, the preprocessing timings and the speed-ups.
Kept apart from bench.py, which measures (and imports torch), so the report reads bench.json without it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from eikd_edge.latency import LatencyStats


class BenchRow(BaseModel):
    """One model on one backend at one batch size; `status` is "ok", "skipped: why" or "failed: why"."""

    model_config = ConfigDict(extra="forbid")
    model: str  # an artifact name from the formats table, or "teacher"
    backend: str  # torch | ort | ort-int8 | trt
    precision: str
    batch: int | None
    status: str
    device: str | None = None
    threads: int | None = None
    warmup: int = 0
    iters: int = 0
    iters_requested: int = 0
    budget_exhausted: bool = False
    elapsed_s: float = 0.0
    latency_ms: LatencyStats | None = None
    device_ms: LatencyStats | None = None  # device compute only, where the backend exposes it
    images_per_s: float | None = None
    size_bytes: int | None = None
    agree_teacher: float | None = None
    agree_student: float | None = None
    top1: float | None = None
    gate_passed: bool | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class PreprocessTiming(BaseModel):
    """Field files to the uint8 input the rows start from, by the spec's policy, at one batch size (one thread)."""

    model_config = ConfigDict(extra="forbid")
    policy: str  # preprocess.describe of the student's spec
    batch: int
    iters: int
    budget_exhausted: bool = False
    latency_ms: LatencyStats
    images_per_s: float


class BenchResult(BaseModel):
    """RUN/bench.json."""

    model_config = ConfigDict(extra="forbid")
    created_with: str
    created_at: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    images: dict[str, Any]
    rows: list[BenchRow]
    preprocess: list[PreprocessTiming] = []  # empty in bench.json files written before it was timed

    def speedups(self, reference: str = "pytorch") -> dict[tuple[str, int], float]:
        """p50 speed-up of every measured row over the PyTorch eager student at the same batch size."""
        base = {r.batch: r.latency_ms.p50 for r in self.rows if r.model == reference and r.ok and r.latency_ms}
        return {
            (r.model, r.batch): base[r.batch] / r.latency_ms.p50
            for r in self.rows
            if r.ok and r.latency_ms and r.batch in base and r.latency_ms.p50 > 0
        }
