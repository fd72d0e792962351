"""The distill stage: select from the pool, train the student against the teacher, keep the best epoch.

Its modules, from the stage down to the pieces it is built of:

    stage.py    the stage: the run folder, the student, then training (`distill`, `DistillResult`, ...)
    inputs.py   its inputs, checked before the run folder is touched (`DistillInputs`, `check_inputs`, ...)
    pool.py     the pool scored and selected (`run_selection`), the chosen images stored for training
    loop.py     the training loop (`Trainer`): rounds of steps, then an evaluation and a checkpoint after each
    optim.py    the schedule: batch and step counts, the warm-up + cosine learning rate
    batches.py  where the training images live (device or host) and each pass's shuffled order
    evaluate.py the student's predictions, agreement with the teacher, the label-free pick of the epoch to keep
    checkpoints.py  student.pt and train_state.pt after each round, and --resume's reading back
    metrics.py  metrics.json's schema, assembled from a finished Trainer
    step.py     the pieces of one training step: augmentation, the LR schedule, the trainable module, the loss mix
    losses.py   the loss functions, pure (tensors in, tensor out)
    methods.py  the method registry: each method's selection, loss terms and the settings it reads (no torch)

stage.py, inputs.py, pool.py, loop.py and the loop's modules (optim.py to metrics.py) are the stage; step.py,
losses.py and methods.py sit below every stage (config.py reads methods.py), so importing this package imports
nothing: the stage's names below are re-exported on first use (PEP 562), and `from eikd_edge.distill.methods import
METHODS` neither imports torch nor the stage.

`from eikd_edge.distill import distill` is the stage's function, as `eikd_edge.distill` is: the package is not an
attribute of eikd_edge (see eikd_edge/__init__.py), so import its modules with `from`
(`from eikd_edge.distill.loop import Trainer`, `from eikd_edge.distill import loop`), not `import ... as`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eikd_edge.distill.inputs import (
        CheckedInputs,
        DistillInputs,
        check_inputs,
        check_resume_inputs,
        load_inputs_teacher,
    )
    from eikd_edge.distill.pool import run_selection
    from eikd_edge.distill.stage import (
        DistillResult,
        distill,
        prepare_run_folder,
        prepare_student,
        write_resolved,
    )

__all__ = [
    "CheckedInputs",
    "DistillInputs",
    "DistillResult",
    "check_inputs",
    "check_resume_inputs",
    "distill",
    "load_inputs_teacher",
    "prepare_run_folder",
    "prepare_student",
    "run_selection",
    "write_resolved",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from eikd_edge.distill import stage  # imports every module the names below are defined in

    value = getattr(stage, name)
    globals()[name] = value  # once resolved, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
