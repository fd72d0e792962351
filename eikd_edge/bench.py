"""Latency and throughput of every artifact of a run (and the teacher, for reference), per backend and batch size.

What is timed is what an application sees: uint8 field images in, logits out, host to host and synchronous, with
normalisation included. The step before it, decoding the field files and bringing them to the input size by the
spec's resize policy (decode, EXIF, resize/crop/pad), is timed beside the rows on the same files. Statistics are
outlier-robust (median and tail percentiles) with mean ± std beside them, and a per-measurement time budget stops a
slow backend from stalling the whole run (the number of iterations that ran is recorded). Torch on CUDA also gets
device compute time from CUDA events. bench.json's schema is in bench_result.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from eikd_edge import __version__
from eikd_edge.atomic import write_json_atomic
from eikd_edge.backends import backend_for
from eikd_edge.bench_result import BenchResult, BenchRow, PreprocessTiming
from eikd_edge.checkpoint import load_student
from eikd_edge.data import confined, decode_image, normalize
from eikd_edge.devices import resolve_device
from eikd_edge.errors import EikdError
from eikd_edge.export.fieldset import FieldImages, folder_images, read_manifest, run_field_images
from eikd_edge.formats import BENCH_NAMES, EXPORT_FLAGS, FORMATS
from eikd_edge.latency import LatencyStats, Timing, cpu_count, cuda_compute, latency_stats, machine_info, time_calls
from eikd_edge.models.spec import InputSpec
from eikd_edge.preprocess import describe
from eikd_edge.run import RunPaths, TeacherChanged, load_run_teacher
from eikd_edge.run_results import model_quality
from eikd_edge.runtime import TorchPredictor

BACKENDS = BENCH_NAMES  # torch, ort, ort-int8, trt: the formats table's bench names


QUALITY_KEYS = ("agree_teacher", "agree_student", "top1", "gate_passed")


EXPORT_HINT = EXPORT_FLAGS  # bench name -> the `eikd-edge export` flag that makes its artifacts


@dataclass(frozen=True)
class BenchOptions:
    batches: tuple[int, ...] = (1, 8, 32)
    backends: tuple[str, ...] = BACKENDS
    warmup: int = 20
    iters: int = 200
    budget_s: float = 30.0  # per model and batch size, warm-up included
    threads: int = 0  # 0: the library's default
    device: str = "auto"  # auto | cpu | cuda
    teacher: bool = True
    images: Path | None = None  # a folder of field images instead of the run's holdout slice
    trust_pickle: bool = False  # from the command line only: may the teacher's file be unpickled


class _TeacherLogits(torch.nn.Module):
    """The teacher as a plain classifier on normalised images at the student's size (resized to its own)."""

    def __init__(self, teacher: Any) -> None:
        super().__init__()
        self.module, self.num_classes, self.size = teacher.module, teacher.num_classes, tuple(teacher.spec.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:  # bilinear resampling commutes with the per-channel normalisation
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", antialias=True)
        return self.module(x).float()[:, : self.num_classes]

    def train(self, mode: bool = True) -> _TeacherLogits:
        """The teacher stays as loaded (eval); torch.export programs refuse a mode switch anyway."""
        return self


def measure(
    predictor: Any, images: torch.Tensor, batch: int, options: BenchOptions
) -> tuple[Timing, LatencyStats | None]:
    """Host-to-host timing of one predictor at one batch size, plus CUDA-event compute time for torch on a GPU."""
    tiled = images[torch.arange(batch) % len(images)].contiguous()
    predictor.batch_size = max(getattr(predictor, "batch_size", batch), batch)  # one call = one inference
    timing = time_calls(lambda: predictor.predict_logits(tiled), options.warmup, options.iters, options.budget_s)
    device_ms = None
    if isinstance(predictor, TorchPredictor) and predictor.device.type == "cuda":
        x = normalize(tiled.to(predictor.device), predictor.spec)
        with torch.inference_mode():
            device_ms = cuda_compute(predictor.model, x, len(timing.samples_s))
    return timing, device_ms


def bench_run(run: RunPaths, options: BenchOptions) -> BenchResult:
    """Measure every requested backend that the run has; write RUN/bench.json atomically."""
    if not run.root.is_dir():
        raise EikdError(f"run folder not found: {run.root}")
    _check(options)
    ckpt = load_student(run.student)
    limit = max(options.batches)
    images = (
        folder_images(options.images, ckpt.spec, limit)
        if options.images
        else run_field_images(run, ckpt.spec, "parity", limit)
    )
    device = resolve_device(options.device).type  # _check allowed only auto, cpu and a visible cuda
    quality = {name: {k: q.get(k) for k in QUALITY_KEYS} for name, q in model_quality(run).items()}
    rows: list[BenchRow] = []
    previous_threads = torch.get_num_threads()
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    try:
        if options.teacher and "torch" in options.backends:
            rows += _teacher_rows(run, ckpt.spec, images.images, device, options, quality)
        for backend in options.backends:
            rows += _backend_rows(run, backend, ckpt, images.images, device, options, quality)
    finally:
        torch.set_num_threads(previous_threads)
    files = _image_files(run, options, images)
    preprocess = [t for batch in options.batches if (t := _time_preprocess(files, ckpt.spec, batch, options))]
    result = BenchResult(
        created_with=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=machine_info(),
        settings={
            k: list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
            for k, v in options.__dict__.items()
        },
        images={"source": images.source, "n": len(images), "tiled_to_batch": True},
        rows=rows,
        preprocess=preprocess,
    )
    write_json_atomic(run.bench, result.model_dump(mode="json"))
    return result


def _image_files(run: RunPaths, options: BenchOptions, images: FieldImages) -> list[Path]:
    """The files the timed images were decoded from."""
    root = options.images if options.images else read_manifest(run)[0]
    return [confined(Path(root), p) for p in images.paths]


def _time_preprocess(files: list[Path], spec: InputSpec, batch: int, options: BenchOptions) -> PreprocessTiming | None:
    """Decode `batch` field files (tiled like the rows' images) into uint8 inputs by the spec's policy."""
    if not files:
        return None
    tiled = [files[i % len(files)] for i in range(batch)]
    try:
        timing = time_calls(
            lambda: [decode_image(path, spec) for path in tiled], options.warmup, options.iters, options.budget_s
        )
    except Exception:  # a file that vanished or changed since it was decoded: no figure rather than a wrong one
        return None
    return PreprocessTiming(
        policy=describe(spec),
        batch=batch,
        iters=len(timing.samples_s),
        budget_exhausted=timing.budget_exhausted,
        latency_ms=latency_stats(timing.samples_s),
        images_per_s=batch * len(timing.samples_s) / sum(timing.samples_s),
    )


def _check(options: BenchOptions) -> None:
    unknown = [b for b in options.backends if b not in BACKENDS]
    if unknown:
        raise EikdError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    if not options.batches or min(options.batches) < 1:
        raise EikdError("--batch takes positive batch sizes, e.g. 1,8,32")
    if options.iters < 1 or options.warmup < 0 or options.budget_s <= 0:
        raise EikdError("--iters must be >= 1, --warmup >= 0 and --budget-s > 0")
    if options.device not in ("auto", "cpu", "cuda"):
        raise EikdError(f"--device must be auto, cpu or cuda, got {options.device!r}")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise EikdError("--device cuda: no CUDA GPU is visible here; use --device cpu")


def _backend_rows(
    run: RunPaths, backend: str, ckpt: Any, images: torch.Tensor, device: str, options: BenchOptions, quality: dict
) -> list[BenchRow]:
    formats = [f for f in FORMATS if f.bench == backend]
    precision = "/".join(f.precision for f in formats)
    name = formats[0].name if len(formats) == 1 else f"{backend}-*"  # what a row for all of them is called
    runtime = backend_for(formats[0])  # one runtime per bench name
    if runtime.optional and (why := runtime.unavailable()):
        return [BenchRow(model=name, backend=backend, precision=precision, batch=None, status=f"skipped: {why}")]
    present = [f for f in formats if f.path(run.root).is_file()]
    if not present:
        hint = f"eikd-edge export {run.root} {EXPORT_HINT.get(backend, '')}".rstrip()
        return [
            BenchRow(
                model=name, backend=backend, precision=precision, batch=None, status=f"skipped: not exported ({hint})"
            )
        ]
    rows = []
    for fmt in present:
        info = {"model": fmt.name, "backend": backend, "precision": fmt.precision, **quality.get(fmt.name, {})}
        info["size_bytes"] = fmt.path(run.root).stat().st_size
        try:
            if not fmt.exported:  # the PyTorch student: already loaded, and timed on the device asked for
                predictor: Any = TorchPredictor(ckpt.model, ckpt.spec, device)
            else:
                predictor = runtime.predictor(fmt, run.root, ckpt.spec, threads=options.threads, device=device)
        except Exception as exc:  # one artifact that cannot load must not stop the others
            rows.append(BenchRow(**info, batch=None, status=f"failed: {_why(exc)}"))
            continue
        rows += _measure_rows(predictor, images, options, info, _device_of(predictor, device))
    return rows


def _teacher_rows(
    run: RunPaths, spec: Any, images: torch.Tensor, device: str, options: BenchOptions, quality: dict
) -> list[BenchRow]:
    info: dict[str, Any] = {"model": "teacher", "backend": "torch", "precision": "fp32", **quality.get("teacher", {})}
    try:
        teacher = load_run_teacher(run, options.trust_pickle)
        info["size_bytes"] = Path(teacher.path).stat().st_size
        predictor = TorchPredictor(_TeacherLogits(teacher), teacher.spec, device)
    except TeacherChanged:
        raise
    except (EikdError, OSError) as exc:
        return [BenchRow(**info, batch=None, status=f"skipped: teacher not available ({_why(exc)})")]
    return _measure_rows(predictor, images, options, info, device)


def _measure_rows(
    predictor: Any, images: torch.Tensor, options: BenchOptions, info: dict[str, Any], device: str
) -> list[BenchRow]:
    rows = []
    for batch in options.batches:
        try:
            timing, device_ms = measure(predictor, images, batch, options)
        except Exception as exc:
            rows.append(BenchRow(**info, batch=batch, device=device, status=f"failed: {_why(exc)}"))
            continue
        stats = latency_stats(timing.samples_s)
        rows.append(
            BenchRow(
                **info,
                batch=batch,
                status="ok",
                device=device,
                threads=_threads(predictor, options),
                warmup=timing.warmup,
                iters=len(timing.samples_s),
                iters_requested=options.iters,
                budget_exhausted=timing.budget_exhausted,
                elapsed_s=round(timing.elapsed_s, 4),
                latency_ms=stats,
                device_ms=device_ms,
                images_per_s=batch * len(timing.samples_s) / sum(timing.samples_s),
            )
        )
    return rows


def _device_of(predictor: Any, device: str) -> str:
    providers = getattr(predictor, "providers", None)
    if providers is not None:
        return "cuda" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"
    return "cuda" if type(predictor).__name__ == "TensorRTPredictor" else device


def _threads(predictor: Any, options: BenchOptions) -> int:
    if isinstance(predictor, TorchPredictor):
        return torch.get_num_threads()
    return options.threads or cpu_count()


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, EikdError) else f"{type(exc).__name__}: {str(exc)[:160]}"
