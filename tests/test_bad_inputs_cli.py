"""Hostile and careless inputs through the real CLI: each ends with one `error:` line and exit 1 (2 for a failed
gate), or is handled (exit 0); never a traceback, never an internal error (exit 4).

Every case is a real file or setting a user can hand the tool: recipe overrides, sidecars, teachers, run-folder
files, pool folders and images. Models are tiny, pools are a few 8x8 digits, so the whole table runs in seconds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from run_fixture import SPEC as FIXTURE_SPEC
from run_fixture import FixtureRun, fresh_run
from torch import nn
from typer.testing import CliRunner

from eikd_edge.checkpoint import save_student
from eikd_edge.cli import app
from eikd_edge.models.zoo import build_model
from tests.conftest import SPEC, save_torchscript

runner = CliRunner()

# A 34-byte lossless WebP that decodes to 8000x8000 pixels (64 MP, exactly at the header limit): amplification.
WEBP_BOMB = bytes.fromhex("524946461a000000574542505650384c0e0000002f3fdfcf07071011fd0f4444ff03")
DEEP = sys.getrecursionlimit() + 100


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EIKD_DEBUG", "")


@dataclass
class Env:
    """What a case builds on: its own folder, the shared tiny teacher and pool, and a private run folder."""

    tmp: Path
    teacher: Path
    pool: Path
    factory: pytest.TempPathFactory

    def run(self) -> FixtureRun:
        return fresh_run(self.factory, "bad-input-run")

    def distill(self, *extra: str, out: Path | None = None) -> list[str]:
        out = out or self.tmp / "run"
        fast = ["--set", "train.steps=2", "--set", "train.batch_size=16", "--set", "selection.batch_size=64"]
        return ["distill", "-t", str(self.teacher), "-u", str(self.pool), "-o", str(out), *fast, *extra]

    def select(self, teacher: Path | None = None, pool: Path | None = None, *extra: str) -> list[str]:
        t, u = str(teacher or self.teacher), str(pool or self.pool)
        return ["select", "-t", t, "-u", u, "-o", str(self.tmp / "run"), *extra]

    def sidecar_teacher(self, text: str) -> Path:
        """A copy of the tiny teacher with `text` as its sidecar."""
        path = self.tmp / "teacher.pt"
        shutil.copy(self.teacher, path)
        path.with_suffix(".yaml").write_text(text, encoding="utf-8")
        return path


def _sidecar(**changes: object) -> str:
    return yaml.safe_dump({**SPEC, **changes})


class _WidthFollowsBatch(nn.Module):
    """Ten outputs for a batch of two (the dry run), 5 x batch outputs otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3))).repeat(1, x.shape[0])


class _AnySize(nn.Module):
    """A teacher that takes any input size cheaply: pool to 4x4, then one Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def _torchscript(env: Env, module: nn.Module, name: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = save_torchscript(module.eval(), env.tmp / name)
    path.with_suffix(".yaml").write_text(_sidecar())
    return path


def _alias_bomb() -> str:
    """Nine lines of YAML whose last class name would be the text of a billion-element nested list."""
    levels = ['&a ["x","x","x","x","x","x","x","x","x","x"]']
    for level in range(1, 9):
        anchor, previous = chr(97 + level), chr(96 + level)
        levels.append(f"&{anchor} [" + ",".join([f"*{previous}"] * 10) + "]")
    return _sidecar().split("classes:")[0] + "classes: [\n  " + ",\n  ".join(levels) + "\n]\n"


_DISTILLED: dict[str, Path] = {}


def _distilled_copy(env: Env) -> Path:
    """A private copy of a real distilled run (built once: two steps on the tiny pool) in env.tmp/run."""
    if "run" not in _DISTILLED:
        out = env.factory.mktemp("distilled") / "run"
        result = runner.invoke(app, env.distill(out=out), terminal_width=200)
        assert result.exit_code == 0, result.output
        _DISTILLED["run"] = out
    return Path(shutil.copytree(_DISTILLED["run"], env.tmp / "run"))


def _resume_with(env: Env, payload: bytes | list[int]) -> list[str]:
    out = _distilled_copy(env)
    if isinstance(payload, bytes):
        (out / "train_state.pt").write_bytes(payload)
    else:
        torch.save(payload, out / "train_state.pt")
    return env.distill("--resume", out=out)


def _cache_holding_a_list(env: Env) -> list[str]:
    out = _distilled_copy(env)
    torch.save([1, 2, 3], out / "cache" / "teacher_outputs.pt")
    return env.select(None, None, "--overwrite")


def _selection_edit(env: Env, command: str, edit: Callable[[dict], None]) -> list[str]:
    run = env.run()
    data = json.loads(run.run.selection.read_text())
    edit(data)
    run.run.selection.write_text(json.dumps(data))
    return [command, str(run.root), *(["--onnx"] if command == "export" else ["--no-confusion"])]


def _deep_tree(env: Env) -> list[str]:
    """The pool's digits plus one more, DEEP folders down (deeper than Python's recursion limit)."""
    pool = env.tmp / "deep"
    shutil.copytree(env.pool, pool)
    fd = os.open(pool, os.O_RDONLY)
    for _ in range(DEEP):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("bottom.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as handle:
        handle.write((env.pool / "0000.png").read_bytes())
    os.close(fd)
    return env.select(pool=pool)


def _remove_deep_tree(root: Path) -> None:
    """shutil.rmtree recurses per level on Python 3.11: walk down by file descriptor and remove upwards."""
    if not (root / "d").is_dir():
        return
    fds = [os.open(root, os.O_RDONLY)]
    while True:
        try:
            fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
        except FileNotFoundError:
            break
    fds.pop()  # the deepest folder: its files go, then it goes from its parent
    deepest = os.open("d", os.O_RDONLY, dir_fd=fds[-1])
    for name in os.listdir(deepest):
        os.unlink(name, dir_fd=deepest)
    os.close(deepest)
    while fds:
        parent = fds.pop()
        os.rmdir("d", dir_fd=parent)
        os.close(parent)


def _bomb_pool(env: Env) -> list[str]:
    pool = env.tmp / "bomb-pool"
    shutil.copytree(env.pool, pool)
    (pool / "bomb.webp").write_bytes(WEBP_BOMB)
    return env.select(pool=pool)


def _nan_student(env: Env) -> list[str]:
    run = env.run()
    model = build_model("cifar_resnet8", 10, width=0.5)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    save_student(
        run.run.student, model, "cifar_resnet8", {"width": 0.5}, FIXTURE_SPEC, extra={"recipe": {"method": "eikd"}}
    )
    return ["export", str(run.root), "--onnx"]


def _nan_student_validate(env: Env) -> list[str]:
    export = _nan_student(env)
    result = runner.invoke(app, export, terminal_width=200)
    assert result.exit_code == 2 and (Path(export[1]) / "export" / "student.onnx").is_file(), result.output
    return ["validate", export[1]]


def _non_utf8_run(env: Env) -> list[str]:
    run = env.run()
    target = Path(os.fsdecode(bytes(env.tmp) + b"/run-\xff\xfe"))
    shutil.copytree(run.root, target)
    return ["report", str(target), "--no-confusion"]


def _selection_json(env: Env) -> dict:
    return json.loads((env.tmp / "run" / "selection.json").read_text())


@dataclass(frozen=True)
class Case:
    build: Callable[[Env], list[str]]
    code: int
    expect: str  # in the `error:` line, or in the output when the command succeeds
    check: Callable[[Env], bool] | None = None  # what must hold afterwards


CASES: dict[str, Case] = {
    # recipes: every number bounded and finite, devices named
    "seed -1": Case(lambda e: e.distill("--set", "train.seed=-1"), 1, "train.seed: Input should be greater than"),
    "30-digit seed": Case(lambda e: e.distill("--set", "train.seed=" + "9" * 30), 1, "train.seed: Input should be"),
    "synthesis seed -1": Case(lambda e: e.distill("--set", "synthesis.seed=-1"), 1, "synthesis.seed"),
    "device foo": Case(lambda e: e.distill("--set", "train.device=foo"), 1, "train.device: 'foo' is not a device"),
    "device meta": Case(lambda e: e.distill("--set", "train.device=meta"), 1, "train.device: 'meta' is not a device"),
    "crop_pad 100000": Case(lambda e: e.distill("--set", "train.augment.crop_pad=100000"), 1, "crop_pad"),
    "width 1000000": Case(lambda e: e.distill("--set", "student.width=1000000"), 1, "student.width"),
    "lr .inf": Case(lambda e: e.distill("--set", "train.lr=.inf"), 1, "train.lr: Input should be a finite number"),
    "lr .nan": Case(lambda e: e.distill("--set", "train.lr=.nan"), 1, "train.lr: Input should be a finite number"),
    "lambda -.inf": Case(
        lambda e: e.distill("--set", "train.curriculum.lambda_start=-.inf"), 1, "lambda_start: Input should be a finite"
    ),
    # a diverging learning rate: stopped at the first non-finite loss, naming the likely cause
    "lr 1e30 diverges": Case(
        lambda e: e.distill("--set", "train.lr=1e30", "--set", "train.steps=6"),
        1,
        "lower train.lr",
    ),
    # sidecars: finite sizes within bounds, a real class list, no aliases, bounded size, sane normalisation
    "sidecar input_size .inf": Case(
        lambda e: e.select(e.sidecar_teacher(_sidecar().replace("- 32\n- 32", "- .inf\n- 32"))),
        1,
        "cannot read input size [inf, 32]",
    ),
    "sidecar input_size 1x1": Case(
        lambda e: e.select(e.sidecar_teacher(_sidecar(input_size=[1, 1]))), 1, "at least 8 pixels"
    ),
    "--input-size 1": Case(lambda e: e.select(None, None, "--input-size", "1"), 1, "at least 8 pixels"),
    "sidecar classes null": Case(
        lambda e: e.select(e.sidecar_teacher(_sidecar(classes=None))), 1, "classes must be a list of names"
    ),
    "sidecar classes nested": Case(
        lambda e: e.select(e.sidecar_teacher(_sidecar(classes=[["a", "b"], "c"]))), 1, "classes must be a list of"
    ),
    "sidecar alias bomb": Case(
        lambda e: e.select(e.sidecar_teacher(_alias_bomb())), 1, "YAML aliases (*name) are not allowed here"
    ),
    "sidecar over 1 MB": Case(
        lambda e: e.select(e.sidecar_teacher(_sidecar() + "#" * (1 << 20) + "\n")), 1, "larger than 1 MB"
    ),
    "sidecar 100001 classes": Case(
        lambda e: e.select(e.sidecar_teacher(json.dumps({"classes": [str(i) for i in range(100_001)]}))),
        1,
        "more than 100000 classes",
    ),
    "sidecar duplicate classes": Case(
        lambda e: e.select(e.sidecar_teacher(_sidecar(classes=["a", "b", "a", *"cdefghi"]))), 1, "duplicate class"
    ),
    "sidecar std 0": Case(
        lambda e: e.select(e.sidecar_teacher(_sidecar(std=[0.5, 0, 0.5]))), 1, "std must be positive"
    ),
    "sidecar mean NaN": Case(
        lambda e: e.select(e.sidecar_teacher(_sidecar().replace("mean:\n- 0.5", "mean:\n- .nan"))),
        1,
        "mean: expected three finite numbers (R,G,B), got [nan, 0.5, 0.5]",
    ),
    # teachers
    "output width follows batch": Case(
        lambda e: e.select(_torchscript(e, _WidthFollowsBatch(), "by_batch.pt")), 1, "depends on the batch size"
    ),
    # run-folder files
    "train_state random bytes": Case(lambda e: _resume_with(e, random.Random(0).randbytes(4096)), 1, "cannot resume"),
    # seeds 2 and 20: bytes on which torch's unpickler raises IndexError and KeyError rather than UnpicklingError
    "train_state random bytes (IndexError)": Case(
        lambda e: _resume_with(e, random.Random(2).randbytes(4096)), 1, "cannot resume"
    ),
    "train_state random bytes (KeyError)": Case(
        lambda e: _resume_with(e, random.Random(20).randbytes(4096)), 1, "cannot resume"
    ),
    "train_state holding a list": Case(lambda e: _resume_with(e, [1, 2, 3]), 1, "cannot resume"),
    "cache holding a list": Case(
        _cache_holding_a_list, 0, "selected", lambda e: _selection_json(e)["pool"]["decoded"] == 120
    ),
    "selection pool [] (export)": Case(
        lambda e: _selection_edit(e, "export", lambda d: d.update(pool=[])), 1, "selection.json"
    ),
    "selection pool [] (report)": Case(
        lambda e: _selection_edit(e, "report", lambda d: d.update(pool=[])), 1, "selection.json"
    ),
    "selection candidates 'many' (report)": Case(
        lambda e: _selection_edit(e, "report", lambda d: d.update(classes=[{"name": "0", "candidates": "many"}])),
        1,
        "selection.json",
    ),
    # pool folders and images
    "folder deeper than the recursion limit": Case(
        _deep_tree, 0, "selected", lambda e: _selection_json(e)["pool"]["files"] == 122
    ),
    "webp decompression bomb": Case(
        _bomb_pool,
        0,
        "selected",
        lambda e: (
            _selection_json(e)["pool"]["skipped"]["by_reason"].get("too large for its file size (decompression bomb?)")
            == 1
        ),
    ),
    "non-UTF-8 run folder (report)": Case(_non_utf8_run, 0, "written:"),
    # gates: a student with NaN outputs fails parity, it does not agree with itself
    "NaN student (export)": Case(_nan_student, 2, "failed the 0.99 top-1 agreement gate"),
    "NaN student (validate)": Case(_nan_student_validate, 2, "1 artifact(s) failed validation: onnx"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(
    name: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    script_teacher: Path,
    digit_images: Path,
) -> None:
    case = CASES[name]
    env = Env(tmp_path, script_teacher, digit_images, tmp_path_factory)
    try:
        args = case.build(env)
        result = runner.invoke(app, args, terminal_width=200)
        output = result.output
        assert "Traceback" not in output and "internal error" not in output, output[-2000:]
        assert result.exit_code == case.code, output[-2000:]
        if case.code == 0:
            assert case.expect in output, output[-2000:]
        else:
            errors = [line for line in output.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and case.expect in errors[0], output[-2000:]
            if case.code == 1:  # a user error: that one line is all there is
                assert output.strip() == errors[0].strip(), output[-2000:]
        assert case.check is None or case.check(env), output[-2000:]
    finally:
        _remove_deep_tree(tmp_path / "deep")


class _RecordsBatches(_AnySize):
    """_AnySize that remembers the batch sizes it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        return super().forward(x)


def test_4096_input_scores_within_a_memory_budget(tmp_path: Path, digit_images: Path) -> None:
    """256 images of 4096x4096 in one float batch would be 51 GB: the default scoring batch shrinks to 2 (512 MB).

    Measured through the CLI on 12 such images: peak resident memory 6.8 GB in one batch, 2.5 GB with the budget.
    """
    from eikd_edge.models.spec import InputSpec
    from eikd_edge.models.teacher import TeacherModel
    from eikd_edge.scoring import score_pool

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(5):
        shutil.copy(digit_images / f"{i:04d}.png", pool)
    module = _RecordsBatches().eval()
    spec = InputSpec((4096, 4096), (0.5,) * 3, (0.5,) * 3, tuple(str(i) for i in range(10)))
    teacher = TeacherModel(module, spec, "test", tmp_path / "teacher.pt", 10, None, "0" * 64)
    scores = score_pool(teacher, pool, torch.device("cpu"), batch_size=256)
    assert len(scores.paths) == 5 and module.batches == [2, 2, 1]


def test_tiny_holdout_writes_null_not_nan(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    """No image held out: agreement cannot be measured; metrics.json says null (strict JSON), the summary says
    that label-free model selection was off."""
    env = Env(tmp_path, script_teacher, digit_images, None)  # type: ignore[arg-type]
    no_holdout = ("--set", "selection.holdout_fraction=0", "--set", "selection.agreement_fraction=0")
    result = runner.invoke(app, env.distill(*no_holdout), terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "label-free model selection was off" in " ".join(result.output.split())
    assert "nan" not in result.output.lower()

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in metrics.json")

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["agreement"]["top1"] is None and metrics["agreement"]["size"] == 0
    assert metrics["agreement"]["ci95"] is None and metrics["agreement"]["selection_holdout"]["top1"] is None
    assert all(epoch["agreement"] is None for epoch in metrics["history"])


def test_nan_rows_never_agree() -> None:
    """The argmax of a NaN row is index 0 on both sides: counted as agreement, a NaN artifact passed at 100%."""
    import numpy as np

    from eikd_edge.export.fieldset import FieldImages
    from eikd_edge.export.parity import Reference, gate_reason, parity

    images = FieldImages(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), ["a", "b", "c", "d"], "test", [None] * 4)
    student = np.tile(np.array([[5.0, 1.0, 0.0]], dtype=np.float32), (4, 1))  # every image: class 0
    artifact = student.copy()
    artifact[1:] = np.nan
    result = parity(artifact, Reference(images, student, None), gate=0.5)
    assert result.agree_student == 0.25 and not result.passed and result.non_finite == 3
    assert "3 of 4 outputs are NaN or Inf" in str(gate_reason(result))
    nan_student = Reference(images, np.full_like(student, np.nan), None)
    assert not parity(np.full_like(student, np.nan), nan_student, gate=0.5).passed  # nor with itself


def test_json_files_hold_null_never_nan(tmp_path: Path) -> None:
    import numpy as np

    from eikd_edge.atomic import write_json_atomic

    path = write_json_atomic(
        tmp_path / "m.json", {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": torch.tensor(float("-inf"))}
    )
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1.5], "c": None}


def test_decode_budget_bounds_pixels_in_flight() -> None:
    """Threads wait until their image fits the budget; an image larger than the whole budget runs alone."""
    import threading
    import time

    from eikd_edge.data import PixelBudget

    budget = PixelBudget(100)
    peak = [0]

    def work(pixels: int) -> None:
        with budget.hold(pixels):
            peak[0] = max(peak[0], budget.in_use)
            time.sleep(0.01)

    threads = [threading.Thread(target=work, args=(60 if i % 4 else 1000,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads) and peak[0] <= 100 and budget.in_use == 0
