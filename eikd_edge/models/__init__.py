"""Models: loading teachers (teacher.py, teacher_state.py, load_errors.py, pt2_guard.py), what a model expects as
input (spec.py, read from sidecar.py), the student zoo (zoo.py, cifar.py, timm_zoo.py), pretrained student weights,
embedding taps and BatchNorm statistics; each is imported by its module's name."""

__all__: list[str] = []
