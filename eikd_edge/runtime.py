"""One small predictor interface over every backend: uint8 NCHW images in, float32 logits out.

Each predictor applies the training preprocessing itself (eikd_edge.data.normalize with the checkpoint's InputSpec),
so validate and bench compare backends on exactly the same pixels. eikd_edge.backends makes them from the formats
table (Backend.predictor).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from eikd_edge.data import normalize
from eikd_edge.errors import EikdError
from eikd_edge.models.spec import InputSpec
from eikd_edge.ort_session import session


def _as_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[1] != 3:
        raise EikdError(f"predictors take uint8 NCHW RGB images, got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor


def _chunks(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [images[i : i + size] for i in range(0, len(images), size)]


class TorchPredictor:
    """The FP32 PyTorch student: the reference every exported artifact is compared with."""

    def __init__(self, model: torch.nn.Module, spec: InputSpec, device: str = "cpu", batch_size: int = 64) -> None:
        self.name, self.spec, self.device, self.batch_size = "pytorch", spec, torch.device(device), batch_size
        self.model = model.eval().to(self.device)

    @classmethod
    def from_checkpoint(cls, path: Path, device: str = "cpu") -> TorchPredictor:
        from eikd_edge.checkpoint import load_student

        ckpt = load_student(path)
        return cls(ckpt.model, ckpt.spec, device)

    @torch.inference_mode()
    def predict_logits(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        parts = [
            self.model(normalize(chunk.to(self.device), self.spec)).float().cpu()
            for chunk in _chunks(_as_uint8(images), self.batch_size)
        ]
        return torch.cat(parts).numpy()


class OnnxPredictor:
    """ONNX Runtime: CUDA when available (device="auto"), else CPU; `threads` caps intra-op threads (0 = ORT's)."""

    def __init__(
        self, path: Path, spec: InputSpec, device: str = "auto", threads: int = 0, batch_size: int = 64, name: str = ""
    ) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise EikdError(f"ONNX model not found: {path} (run `eikd-edge export RUN --onnx`)")
        available = ort.get_available_providers()
        use_cuda = device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in available)
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise EikdError(
                "onnxruntime here has no CUDAExecutionProvider; install onnxruntime-gpu or use --device cpu"
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        self.session = session(path, threads, providers)
        self.name, self.spec, self.batch_size = name or Path(path).name, spec, batch_size
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()

    def predict_logits(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        parts = [
            self.session.run(None, {self.input_name: normalize(chunk, self.spec).numpy()})[0]
            for chunk in _chunks(_as_uint8(images), self.batch_size)
        ]
        return np.concatenate(parts).astype(np.float32)


class TensorRTPredictor:
    """A TensorRT engine (after its build record matched this GPU + TensorRT), run with torch CUDA buffers."""

    def __init__(self, path: Path, spec: InputSpec, name: str = "") -> None:
        from eikd_edge.trt_engine import load_engine

        self.runtime, self.engine, record = load_engine(Path(path))
        self.context = self.engine.create_execution_context()
        self.name, self.spec = name or Path(path).name, spec
        self.max_batch = int(record["max_shape"][0])
        self.min_batch = int(record.get("min_shape", record["max_shape"])[0])  # a DLA engine has a static batch
        self.input_name = str(record.get("input_name", "images"))
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.output_name = next(n for n in names if n != self.input_name)
        dtypes = {"DataType.FLOAT": torch.float32, "DataType.HALF": torch.float16}
        self.in_dtype = dtypes.get(str(self.engine.get_tensor_dtype(self.input_name)), torch.float32)
        self.out_dtype = dtypes.get(str(self.engine.get_tensor_dtype(self.output_name)), torch.float32)

    @torch.inference_mode()
    def predict_logits(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        stream = torch.cuda.current_stream()
        outputs = []
        for chunk in _chunks(_as_uint8(images), self.max_batch):
            n = len(chunk)
            if n < self.min_batch:  # pad to the static batch, keep the first n outputs
                chunk = torch.cat([chunk, chunk[-1:].expand(self.min_batch - n, *chunk.shape[1:])])
            x = normalize(chunk.cuda(non_blocking=True), self.spec).to(self.in_dtype).contiguous()
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            shape = tuple(self.context.get_tensor_shape(self.output_name))
            out = torch.empty(shape, dtype=self.out_dtype, device="cuda")
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise EikdError(f"TensorRT failed to run {self.name}")
            outputs.append(out[:n])
        stream.synchronize()
        return torch.cat(outputs).float().cpu().numpy()
