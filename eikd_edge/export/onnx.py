"""Student -> student.onnx: dynamic batch, metadata, onnxslim, full checker pass, and a parity self-check.

Exporter choice (measured, see export/README.md): opset <= 17 uses the TorchScript-based exporter, because the
dynamo exporter on torch 2.14 cannot emit opset 17 (its down-conversion fails and it stays at 18, which JetPack 5's
TensorRT 8.5 cannot parse) and is 7-30x slower for the same numerical result. Opset >= 18 uses the dynamo exporter,
and so does "auto" whenever the TorchScript exporter fails or no longer exists.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from eikd_edge import __version__, preprocess
from eikd_edge.atomic import write_atomic
from eikd_edge.checkpoint import StudentCheckpoint
from eikd_edge.errors import EikdError
from eikd_edge.models.teacher import file_sha256
from eikd_edge.models.zoo import for_export
from eikd_edge.ort_session import session as ort_session

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
EXPORTERS = ("auto", "torchscript", "dynamo")
MIN_OPSET, MAX_OPSET = 11, 21
SELF_CHECK_BATCHES = (1, 7)
SELF_CHECK_ATOL = 1e-4
TEMP_PREFIX = "eikd-onnx-"  # + the exporting process's pid + "-": work folders in the system temp dir
_TEMP_FOLDER = re.compile(rf"^{TEMP_PREFIX}(?P<pid>\d+)-")


def sweep_temp_folders() -> list[Path]:
    """Remove this user's export work folders whose process is gone (a killed export); live ones are left alone."""
    from eikd_edge.runlock import pid_alive

    removed: list[Path] = []
    try:
        entries = list(Path(tempfile.gettempdir()).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_FOLDER.match(entry.name)
        if match is None or pid_alive(int(match.group("pid"))):
            continue
        try:
            if entry.is_symlink() or not entry.is_dir() or entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    exporter: str
    build_s: float
    size_bytes: int
    self_check_max_abs_dlogit: float  # vs PyTorch at batch sizes SELF_CHECK_BATCHES


@dataclass(frozen=True)
class Parsable:
    """The newest ONNX a deployment target reads (its profile's max_opset / max_ir_version) and who it is."""

    target: str
    max_opset: int
    max_ir_version: int


def export_onnx(
    ckpt: StudentCheckpoint, out: Path, opset: int = 17, exporter: str = "auto", limits: Parsable | None = None
) -> OnnxExport:
    """Export, simplify, annotate, check and self-test; the file appears atomically only when all passed, and only
    when the target can parse it (the dynamo fallback silently raises the opset to 18 and the IR version to 10)."""
    if exporter not in EXPORTERS:
        raise EikdError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
    start = time.perf_counter()
    model = for_export(ckpt.model.eval(), ckpt.arch)  # re-parameterisable timm models fused
    h, w = ckpt.spec.input_size
    example = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:  # the pid: see sweep_temp_folders
        raw_path = Path(tmp) / "raw.onnx"
        used = _export(model, example, raw_path, opset, exporter)
        proto = onnx.load(str(raw_path))
    proto = _simplify(proto)
    written = opset_of(proto)
    if limits is not None:
        check_parsable(written, proto.ir_version, limits, used, opset)
    _annotate(proto, ckpt)
    onnx.checker.check_model(proto, full_check=True)
    error = self_check(proto, model, (3, h, w))
    if error > SELF_CHECK_ATOL * max(1.0, _logit_scale(model, example)):
        raise EikdError(f"ONNX export disagrees with PyTorch (max |dlogit| {error:.2e}); try --exporter dynamo")
    write_atomic(out, lambda tmp: onnx.save(proto, str(tmp)))
    return OnnxExport(out, written or opset, used, time.perf_counter() - start, out.stat().st_size, error)


def opset_of(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def check_parsable(written: int | None, ir_version: int, limits: Parsable, exporter: str, requested: int) -> None:
    """Refuse an ONNX the target's runtime cannot parse, naming the cause (an exporter that raised the opset)."""
    raised = f" (the {exporter} exporter raised it from the requested {requested})" if written != requested else ""
    if written is not None and written > limits.max_opset:
        raise EikdError(
            f"the exported ONNX has opset {written}{raised}, above the {limits.max_opset} that target "
            f"{limits.target} parses; use --exporter torchscript or a target whose runtime reads opset {written}"
        )
    if ir_version > limits.max_ir_version:
        raise EikdError(
            f"the exported ONNX has IR version {ir_version} (from the {exporter} exporter), above the "
            f"{limits.max_ir_version} that target {limits.target} reads; use --exporter torchscript"
        )


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str) -> str:
    choice = exporter if exporter != "auto" else ("torchscript" if opset < 18 else "dynamo")
    if choice == "torchscript":
        try:
            _export_torchscript(model, example, path, opset)
            return "torchscript"
        except Exception as exc:
            if exporter != "auto":
                raise EikdError(f"TorchScript ONNX exporter failed: {type(exc).__name__}: {exc}") from None
    _export_dynamo(model, example, path, opset)
    return "dynamo"


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch calls this exporter legacy; it is the 17 path
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )


def _export_dynamo(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    quiet = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the exporter logs its opset down-conversion attempts at WARNING
    try:
        with contextlib.redirect_stdout(quiet), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=max(opset, 18),
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
    finally:
        logging.disable(previous)


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(proto)
    except Exception as exc:
        raise EikdError(f"onnxslim could not simplify the model: {type(exc).__name__}: {exc}") from None
    if not isinstance(slim, onnx.ModelProto):
        raise EikdError("onnxslim returned no model")
    return slim


def _annotate(proto: onnx.ModelProto, ckpt: StudentCheckpoint) -> None:
    """metadata_props: everything a deployment needs to feed the model without eikd-edge installed."""
    spec = ckpt.spec
    props = {
        "classes": json.dumps(list(spec.classes)),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "input_size": json.dumps(list(spec.input_size)),
        **preprocess.metadata(spec),  # how a photo becomes that input: resize, crop_pct, interpolation, ...
        "input_format": "RGB NCHW float32, (pixel/255 - mean) / std",
        "arch": ckpt.arch,
        "source_checkpoint_sha256": file_sha256(ckpt.path),
        "eikd_edge_version": __version__,
    }
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "eikd-edge"
    proto.producer_version = __version__


def read_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@torch.no_grad()
def self_check(proto: onnx.ModelProto, model: torch.nn.Module, chw: tuple[int, int, int]) -> float:
    """Max |dlogit| vs PyTorch at several batch sizes: proves the dynamic batch axis really is dynamic."""
    # one thread: a correctness check on a few images needs no thread pool to spin up; ORT's warnings stay on
    session = ort_session(proto.SerializeToString(), threads=1, log_severity=None)
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch in SELF_CHECK_BATCHES:
        x = torch.randn(batch, *chw, generator=generator)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        worst = max(worst, float(np.abs(got - model(x).numpy()).max()))
    return worst


@torch.no_grad()
def _logit_scale(model: torch.nn.Module, example: torch.Tensor) -> float:
    return float(model(example).abs().max())
