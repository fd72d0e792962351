# eikd-edge for GPU hosts. The NGC PyTorch image already ships CUDA, cuDNN, PyTorch and TensorRT: eikd-edge is
# installed on top under constraints generated from the image's own packages, so pip can never replace NVIDIA's
# torch or TensorRT builds. NVIDIA's entrypoint (CUDA forward-compatibility set-up, banner) stays in place.
# Build:  docker build -t eikd-edge .
# Run:    docker run --gpus all --rm -v "$PWD:/data" -w /data eikd-edge eikd-edge distill -t t.pt -u imgs -o runs/exp1
FROM nvcr.io/nvidia/pytorch:25.01-py3

WORKDIR /opt/eikd-edge
COPY pyproject.toml README.md ./
COPY eikd_edge ./eikd_edge
COPY examples ./examples

# Every package the image already has is pinned to its installed version (editable and direct-URL lines dropped,
# they cannot be constraints); the image's TensorRT is used, so the [trt] extra is not installed.
RUN pip list --format=freeze | grep -E '^[A-Za-z0-9_.-]+==' > /tmp/image-constraints.txt \
    && PIP_CONSTRAINT=/tmp/image-constraints.txt pip install --no-cache-dir . \
    && pip list --format=freeze | grep -iE '^(torch|tensorrt)==' > /tmp/after.txt \
    && grep -iE '^(torch|tensorrt)==' /tmp/image-constraints.txt | diff - /tmp/after.txt \
    && eikd-edge --version

# Smoke test inside the build: a short real run on the bundled example (20 training steps on the CPU, no GPU at
# build time), exported to ONNX and INT8 by the installed package from outside the source tree. It proves the
# install works, not the student's quality, hence the low --gate. A build that cannot export fails here.
RUN cd /tmp \
    && eikd-edge quickstart --example /opt/eikd-edge/examples/digits --out /tmp/smoke --set train.steps=20 \
    && eikd-edge export /tmp/smoke --onnx --int8 --gate 0.5 \
    && rm -rf /tmp/smoke /tmp/image-constraints.txt /tmp/after.txt

CMD ["eikd-edge", "--help"]
