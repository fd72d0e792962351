"""Options shared by every command that loads a teacher, so each spells them the same way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from eikd_edge.errors import EikdError

MAX_CLASS_FILE_BYTES = 8 << 20  # 100,000 names of a few dozen characters
# eikd_edge.export.parity's default, spelled here so `--help` need not import it (tests/test_help.py compares them)
DEFAULT_GATE = 0.99

RunFolder = Annotated[
    Path, typer.Argument(metavar="RUN", help="Run folder written by `eikd-edge distill` (and later commands).")
]
TeacherPath = Annotated[
    Path, typer.Option("--teacher", "-t", help="Teacher file: TorchScript, .pt2, state_dict, or pickle.")
]
TeacherArch = Annotated[
    str | None,
    typer.Option(
        "--teacher-arch",
        metavar="ARCH",
        help="Architecture for a state_dict teacher (see `eikd-edge models --all`), or timm:NAME.",
    ),
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow a teacher whose loading runs code from its file (a pickled nn.Module, a .pt2 with pickled "
        "entries): only for teachers you trust. Never read from a run folder.",
    ),
]
InputSize = Annotated[
    str | None,
    typer.Option("--input-size", metavar="HxW", help="Teacher input size, H or HxW.", show_default="the sidecar's"),
]
Mean = Annotated[
    str | None,
    typer.Option("--mean", metavar="R,G,B", help="Normalisation mean.", show_default="the sidecar's, else ImageNet's"),
]
Std = Annotated[
    str | None,
    typer.Option("--std", metavar="R,G,B", help="Normalisation std.", show_default="the sidecar's, else ImageNet's"),
]
Classes = Annotated[
    str | None,
    typer.Option(
        "--classes",
        metavar="A,B,...|@FILE",
        help="Class names, comma-separated, or a file with one name per line (@names.txt, or any existing path).",
        show_default="the sidecar's",
    ),
]
Resize = Annotated[
    str | None,
    typer.Option(
        "--resize",
        metavar="POLICY",
        help="How images are brought to the input size, as the teacher was fed: comma-separated center_crop, squash "
        "or letterbox; bilinear, bicubic or nearest; a crop fraction (0.875) or resize size (256), e.g. 256,bicubic.",
        show_default="the sidecar's, else resize 256 + crop 224 (whole image at 64 px or less), bilinear",
    ),
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe setting (repeatable), e.g. train.epochs=5."),
]
Device = Annotated[
    str | None,
    typer.Option("--device", metavar="auto|cpu|cuda|cuda:N", help="Device to run on.", show_default="auto"),
]
Threads = Annotated[
    int,
    typer.Option("--threads", min=0, help="CPU threads for PyTorch and ONNX Runtime; 0 = one per core."),
]
TrainThreads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=0,
        metavar="N",
        help="CPU threads for PyTorch and for decoding images; 0 = one per core.",
        show_default="PyTorch's; up to 8 decoding",
    ),
]

CacheDir = Annotated[
    str | None,
    typer.Option(
        "--cache-dir",
        metavar="DIR|none",
        help="Folder where the teacher's scores of a pool are kept, so a later run with the same teacher and pool "
        "skips scoring; none: keep them only in the run folder.",
        show_default="$XDG_CACHE_HOME/eikd-edge, else ~/.cache/eikd-edge",
    ),
]


def resolve_cache_dir(value: str | None) -> Path | None:
    """`--cache-dir`: the folder to use (the XDG default when not given), or None for `none`."""
    if value is None:
        from eikd_edge.score_cache import default_cache_dir

        return default_cache_dir()
    if not value.strip():
        raise EikdError("--cache-dir: give a folder, or none to keep the teacher's scores only in the run folder")
    if value.strip().lower() in {"none", "off"}:
        return None
    return Path(value).expanduser().resolve()


def spec_overrides(
    input_size: str | None, mean: str | None, std: str | None, classes: str | None, resize: str | None = None
) -> dict[str, Any]:
    overrides: dict[str, Any] = {"input_size": input_size, "mean": mean, "std": std}
    if classes:
        overrides["classes"] = parse_class_option(classes)
    if resize:
        from eikd_edge.models.spec import parse_resize_flag

        overrides.update(parse_resize_flag(resize))
    return {k: v for k, v in overrides.items() if v is not None}


def parse_class_option(value: str) -> list[str]:
    """`--classes`: `@FILE` or an existing file holds one name per line (ImageNet's names contain commas, as in
    "tench, Tinca tinca"); anything else is a comma-separated list."""
    path = Path(value[1:]) if value.startswith("@") else Path(value)
    if value.startswith("@") or path.is_file():
        return _read_class_file(path)
    return [c.strip() for c in value.split(",") if c.strip()]


def _read_class_file(path: Path) -> list[str]:
    try:
        if not path.is_file():
            raise EikdError(f"--classes: class file not found: {path}")
        if path.stat().st_size > MAX_CLASS_FILE_BYTES:
            raise EikdError(f"--classes: {path} is larger than 8 MB; it should hold one class name per line")
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise EikdError(f"--classes: {path} is not UTF-8 text; save it as UTF-8, one class name per line") from None
    except OSError as exc:
        raise EikdError(f"--classes: cannot read {path}: {exc.strerror or exc}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise EikdError(f"--classes: {path} holds no class names; write one name per line")
    return names


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int | None]:
    """PyTorch's CPU threads for the body (`threads`, 0 = one per core), restored afterwards; None leaves them.

    Yields the resolved count, which the caller also gives its image decoders."""
    if threads is None:
        yield None
        return
    import torch

    previous = torch.get_num_threads()
    count = resolve_threads(threads)
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def check_gate(gate: float) -> None:
    """--gate is a top-1 agreement share: above 0 (a gate of 0 passes anything) and at most 1."""
    if not 0.0 < gate <= 1.0:
        raise EikdError(f"--gate must be in (0, 1], got {gate}")


def resolve_threads(threads: int) -> int:
    """`--threads 0` means one thread per CPU core this process may run on, in every command and library."""
    if threads:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


DEFAULT_SAMPLER = "odsd"  # the recipe's default, as `--help` shows it (tests/test_help.py checks it)

Unlabeled = Annotated[Path, typer.Option("--unlabeled", "-u", help="Folder of unlabeled field images (recursive).")]
MaybeUnlabeled = Annotated[
    Path | None,
    typer.Option("--unlabeled", "-u", help="Folder of unlabeled field images (recursive); optional with --synthesize."),
]
Sampler = Annotated[
    str | None,
    typer.Option(
        "--select",
        metavar="odsd|top",
        help="odsd: sampled by closeness to the teacher's data (ODSD) | top: class-balanced most confident (EIKD).",
        show_default=DEFAULT_SAMPLER,
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")]
RecipeFile = Annotated[
    Path | None, typer.Option("--recipe", help="Recipe YAML (see recipes/).", show_default="recipes/default.yaml")
]
