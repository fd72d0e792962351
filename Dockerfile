# eikd-edge for GPU hosts. The NGC PyTorch image already ships CUDA, cuDNN, PyTorch and TensorRT, so the
# project is installed on top without touching torch (no constraints file here: keep NVIDIA's builds).
# Build:  docker build -t eikd-edge .
# Run:    docker run --gpus all --rm -v "$PWD:/data" -w /data eikd-edge distill -t t.pt -u imgs -o runs/exp1
FROM nvcr.io/nvidia/pytorch:25.01-py3

WORKDIR /opt/eikd-edge
COPY pyproject.toml README.md ./
COPY eikd_edge ./eikd_edge
COPY export ./export
COPY recipes ./recipes
COPY examples ./examples
RUN pip install --no-cache-dir ".[trt]" && eikd-edge --version

ENTRYPOINT ["eikd-edge"]
CMD ["--help"]
