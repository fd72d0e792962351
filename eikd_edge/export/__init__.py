"""Export a run's student to deployable artifacts (ONNX, ONNX Runtime INT8, TensorRT) with build records."""

__all__: list[str] = []
