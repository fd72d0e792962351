"""Timing of the training step: overall img/s on plain steps, and the split of a step into data, teacher and
student phases on a few instrumented steps (CUDA events on a GPU, the wall clock on a CPU).

The split needs no change to the step: events are recorded before the batch is fetched, around the teacher's
forward pass (module hooks) and after the step returns, so the three phases partition the stream's timeline
and their shares sum to 1. Idle gaps (Python, host syncs) count in the phase during which they happen."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

PHASES = ("data", "teacher", "student")


class Clock:
    """Timestamps on the device's timeline: CUDA events (read after a sync) or perf_counter on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0 if self.cuda else end - start

    def wait(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


@dataclass
class Plan:
    """How many steps of each kind, and the wall-clock budget of the timed part."""

    warmup: int = 10
    instrumented: int = 5
    min_steps: int = 10
    max_steps: int = 400
    budget_s: float = 60.0


QUICK_PLAN = Plan(warmup=1, instrumented=1, min_steps=1, max_steps=1, budget_s=5.0)


@dataclass
class Measurement:
    img_s: float
    steps: int
    timed_s: float
    step_ms: float
    warmup_s: float
    first_step_s: float  # includes torch.compile's compilation when compiled
    phases: dict[str, float]  # share of the instrumented steps' time, summing to 1
    phase_ms: dict[str, float]  # mean milliseconds per instrumented step
    peak_gpu_mem_gib: float | None
    peak_gpu_reserved_gib: float | None
    loss_first: float  # the training loss at the first and the last step run: finite, and moving
    loss_last: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class TeacherMarks:
    """Marks taken when the teacher's forward pass starts and ends (forward pre/post hooks)."""

    def __init__(self, module: nn.Module, clock: Clock) -> None:
        self.clock = clock
        self.start: Any = None
        self.end: Any = None
        self._handles = [module.register_forward_pre_hook(self._begin), module.register_forward_hook(self._finish)]

    def _begin(self, *_: Any) -> None:
        if self.start is None:
            self.start = self.clock.mark()

    def _finish(self, *_: Any) -> None:
        self.end = self.clock.mark()

    def take(self) -> tuple[Any, Any]:
        if self.start is None or self.end is None:
            raise RuntimeError("the teacher did not run inside the step; the phase split needs it online")
        pair, self.start, self.end = (self.start, self.end), None, None
        return pair

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def teacher_marks(module: nn.Module, clock: Clock) -> Iterator[TeacherMarks]:
    marks = TeacherMarks(module, clock)
    try:
        yield marks
    finally:
        marks.remove()


def phase_split(step: Callable[[], Any], teacher: nn.Module, clock: Clock, steps: int) -> dict[str, float]:
    """Seconds spent in each phase over `steps` consecutive steps (no sync between them: overlap stays as in
    an un-instrumented run)."""
    rows = []
    with teacher_marks(teacher, clock) as marks:
        for _ in range(steps):
            start = clock.mark()
            step()
            end = clock.mark()
            rows.append((start, *marks.take(), end))
    clock.wait()
    totals = dict.fromkeys(PHASES, 0.0)
    for start, t_start, t_end, end in rows:
        totals["data"] += clock.seconds(start, t_start)
        totals["teacher"] += clock.seconds(t_start, t_end)
        totals["student"] += clock.seconds(t_end, end)
    return totals


def shares(totals: dict[str, float]) -> dict[str, float]:
    whole = sum(totals.values())
    return {k: (v / whole if whole > 0 else 0.0) for k, v in totals.items()}


def measure(
    step: Callable[[], dict[str, float]], teacher: nn.Module, device: torch.device, batch: int, plan: Plan
) -> Measurement:
    """Warm-up (excluded), timed plain steps until `max_steps` or the budget, then the instrumented steps."""
    clock = Clock(device)
    losses: list[float] = []
    started = time.perf_counter()
    first_step_s = 0.0
    for i in range(plan.warmup):
        losses.append(step()["total"])
        if i == 0:
            clock.wait()
            first_step_s = time.perf_counter() - started
    clock.wait()
    warmup_s = time.perf_counter() - started
    steps = 0
    started = time.perf_counter()
    while steps < plan.max_steps and (steps < plan.min_steps or time.perf_counter() - started < plan.budget_s):
        losses.append(step()["total"])
        steps += 1
    clock.wait()
    timed_s = time.perf_counter() - started
    totals = phase_split(lambda: losses.append(step()["total"]), teacher, clock, plan.instrumented)
    peak, reserved = peak_memory(device)
    return Measurement(
        img_s=steps * batch / timed_s if timed_s > 0 else float("nan"),
        steps=steps,
        timed_s=round(timed_s, 3),
        step_ms=round(1000 * timed_s / max(steps, 1), 3),
        warmup_s=round(warmup_s, 3),
        first_step_s=round(first_step_s, 3),
        phases=shares(totals),
        phase_ms={k: round(1000 * v / max(plan.instrumented, 1), 3) for k, v in totals.items()},
        peak_gpu_mem_gib=peak,
        peak_gpu_reserved_gib=reserved,
        loss_first=losses[0] if losses else float("nan"),
        loss_last=losses[-1] if losses else float("nan"),
    )


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float | None, float | None]:
    if device.type != "cuda":
        return None, None
    gib = 1024**3
    return (
        round(torch.cuda.max_memory_allocated(device) / gib, 3),
        round(torch.cuda.max_memory_reserved(device) / gib, 3),
    )
