"""eikd-edge: distil a compact edge student from a teacher and unlabeled field images.

The Python API is the functions the commands call, imported on first use (PEP 562), so `import eikd_edge` (and
`eikd-edge --help`) never imports torch:

    from eikd_edge import DistillInputs, ExportRequest, distill, export_run, load_recipe, load_teacher, validate_run

`eikd_edge.distill` is the function, whichever is imported first. The package of the same name (the distill stage,
eikd_edge/distill/) is still imported by its full name (`import eikd_edge.distill`, `from eikd_edge.distill import
DistillResult`, `from eikd_edge.distill.loop import Trainer`, `from eikd_edge.distill import loop`) but is not an
attribute of this package, so `import eikd_edge.distill as m` binds the function and `import eikd_edge.distill.loop
as m` fails (Python looks `loop` up on the function): use `from ... import` or `importlib.import_module`.
"""

from __future__ import annotations

import sys
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("eikd-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

if TYPE_CHECKING:
    from eikd_edge.config import load_recipe
    from eikd_edge.distill import DistillInputs, distill
    from eikd_edge.export.pipeline import ExportRequest, export_run
    from eikd_edge.models.teacher import load_teacher
    from eikd_edge.validate import validate_run

# each public name and the module it lives in: re-exported, never re-implemented
_HOMES = {
    "load_teacher": "eikd_edge.models.teacher",
    "load_recipe": "eikd_edge.config",
    "DistillInputs": "eikd_edge.distill",
    "distill": "eikd_edge.distill",
    "ExportRequest": "eikd_edge.export.pipeline",
    "export_run": "eikd_edge.export.pipeline",
    "validate_run": "eikd_edge.validate",
}

__all__ = [
    "DistillInputs",
    "ExportRequest",
    "__version__",
    "distill",
    "export_run",
    "load_recipe",
    "load_teacher",
    "validate_run",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # once resolved, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


class _Package(ModuleType):
    """Importing a submodule sets it as an attribute of the package; for a public name that is also a subpackage
    (`distill`), the function keeps the name, whichever is imported first."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOMES and isinstance(value, ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
