"""ONNX Runtime sessions opened one way (the self-check, the INT8 search, the parity predictors), so every
comparison runs under the same thread cap and logging."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime as ort

CPU_ONLY = ("CPUExecutionProvider",)
ERRORS_ONLY = 3  # ORT's log severity: errors only


def session(
    model: Path | bytes,
    threads: int = 0,
    providers: Sequence[str] = CPU_ONLY,
    log_severity: int | None = ERRORS_ONLY,
) -> ort.InferenceSession:
    """A session on a model file (or its serialised bytes). `threads` caps intra-op threads (0: ORT's choice);
    `log_severity` None leaves ORT's own default."""
    import onnxruntime as ort  # on use: importing this module loads nothing

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if log_severity is not None:
        options.log_severity_level = log_severity
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=list(providers))
