"""Files from strangers: every file eikd-edge reads gets a payload that would run code, and the code must not run.

Each payload creates a marker folder when unpickled (or when a YAML loader builds Python objects); every test
asserts the marker is absent afterwards, and where the attack needs a flag to work, a control run with the flag
shows the same file does run code, so the marker's absence is proof and not an accident.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from run_fixture import FixtureRun, fresh_run
from torch import nn
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.models.pt2_guard import safe_sym_expr, safe_target
from eikd_edge.models.teacher import file_sha256
from tests.conftest import SPEC, save_torchscript, tiny_classifier, write_sidecar

runner = CliRunner()
FAST = ["train.epochs=1", "train.batch_size=16", "student.width=0.5", "selection.batch_size=64"]


@pytest.fixture(autouse=True)
def _no_debug_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EIKD_DEBUG", "")


class _RunsCode:
    """Unpickling this creates a folder: the proof of whether a pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def _pickle_payload(marker: Path, wrap: object = None) -> bytes:
    buffer = io.BytesIO()
    torch.save(wrap(_RunsCode(marker)) if wrap else _RunsCode(marker), buffer)
    return buffer.getvalue()


def _yaml_payload(marker: Path) -> str:
    return f'!!python/object/apply:os.mkdir ["{marker}"]\n'


def _invoke(args: list[str]):
    return runner.invoke(app, [str(a) for a in args], terminal_width=200)


def _one_error_line(result, expected: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


def _clean(result) -> None:
    """A clean end: success or one user error, never a crash (exit 4) or a traceback."""
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


# --- 1. a run folder cannot switch unpickling on; a changed teacher is refused before it is read -------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    run = fresh_run(tmp_path_factory, "hostile-run")
    result = _invoke(["export", run.root, "--onnx", "--threads", "1"])
    assert result.exit_code == 0, result.output
    return run


def _copy(run: FixtureRun, tmp_path: Path) -> FixtureRun:
    target = tmp_path / "run"
    shutil.copytree(run.root, target)
    return FixtureRun(type(run.run)(target), run.teacher, run.pool, run.val)


def _point_recipe_at(run: FixtureRun, teacher: Path, trust_pickle: bool) -> None:
    resolved = yaml.safe_load(run.run.recipe.read_text())
    resolved["inputs"].update({"teacher": str(teacher), "trust_pickle": trust_pickle})
    run.run.recipe.write_text(yaml.safe_dump(resolved))


def _record_teacher(run: FixtureRun, teacher: Path) -> None:
    """What an attacker who hands over the whole run folder can do: record the payload's own sha256."""
    payload = torch.load(run.run.student, weights_only=True)
    payload["teacher"] = {"path": str(teacher), "sha256": file_sha256(teacher)}
    torch.save(payload, run.run.student)


RELOADERS = {
    "export": ["export", "{run}", "--onnx", "--threads", "1"],
    "validate": ["validate", "{run}", "--threads", "1"],
    "bench": [
        "bench",
        "{run}",
        "--batch",
        "1",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--backends",
        "torch",
        "--threads",
        "1",
    ],
    "report": ["report", "{run}"],
}


def _command(name: str, run: FixtureRun, *extra: str) -> list[str]:
    return [arg.format(run=run.root) for arg in RELOADERS[name]] + list(extra)


@pytest.mark.parametrize("command", list(RELOADERS))
def test_recipe_cannot_switch_on_unpickling(command: str, exported: FixtureRun, tmp_path: Path) -> None:
    """The whole run folder is hostile (recipe says trust_pickle, student.pt records the payload's sha256): without
    --trust-pickle on the command line nothing is unpickled; the teacher is skipped with a note."""
    run = _copy(exported, tmp_path)
    evil = tmp_path / "teacher.pt"
    evil.write_bytes(_pickle_payload(tmp_path / "code_ran"))
    write_sidecar(evil, {k: v for k, v in SPEC.items() if k != "classes"})
    _point_recipe_at(run, evil, trust_pickle=True)
    _record_teacher(run, evil)
    result = _invoke(_command(command, run))
    assert not (tmp_path / "code_ran").exists(), result.output
    _clean(result)


def test_trust_pickle_on_the_command_line_is_what_unpickles(exported: FixtureRun, tmp_path: Path) -> None:
    """The control for the test above: the same folder with --trust-pickle given does run the file's code."""
    run = _copy(exported, tmp_path)
    evil = tmp_path / "teacher.pt"
    evil.write_bytes(_pickle_payload(tmp_path / "code_ran"))
    _point_recipe_at(run, evil, trust_pickle=False)
    _record_teacher(run, evil)
    _invoke(_command("bench", run, "--trust-pickle"))
    assert (tmp_path / "code_ran").is_dir()


@pytest.mark.parametrize("command", list(RELOADERS))
def test_changed_teacher_is_refused_before_it_is_read(command: str, exported: FixtureRun, tmp_path: Path) -> None:
    """The recipe now names another file than the one distilled from: even with --trust-pickle it is not loaded."""
    run = _copy(exported, tmp_path)
    evil = tmp_path / "teacher.pt"
    evil.write_bytes(_pickle_payload(tmp_path / "code_ran"))
    _point_recipe_at(run, evil, trust_pickle=True)
    result = _invoke(_command(command, run, "--trust-pickle"))
    assert not (tmp_path / "code_ran").exists()
    _one_error_line(result, f"teacher {evil} changed since this run was distilled")


def test_teacher_replaced_in_place_is_refused(exported: FixtureRun, tmp_path: Path) -> None:
    """The teacher file itself was overwritten with another model (same path): one line naming it, exit 1."""
    run = _copy(exported, tmp_path)
    teacher = save_torchscript(tiny_classifier(seed=3), tmp_path / "teacher.pt")
    write_sidecar(teacher)
    _point_recipe_at(run, teacher, trust_pickle=False)
    payload = torch.load(run.run.student, weights_only=True)
    payload["teacher"] = {"path": str(teacher), "sha256": "0" * 64}
    torch.save(payload, run.run.student)
    _one_error_line(_invoke(_command("validate", run)), f"teacher {teacher} changed since this run was distilled")


# --- 2. .pt2 archives are read as data first ----------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().mean(dim=(2, 3)))


def _export(path: Path, dynamic: bool = True, batch: int = 2) -> Path:
    torch.manual_seed(0)
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    program = torch.export.export(_Tiny().eval(), (torch.zeros(batch, 3, 32, 32),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    write_sidecar(path)
    return path


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("pt2") / "clean.pt2")


def _rewrite(source: Path, target: Path, edit) -> Path:
    """A copy of a real .pt2 archive with `edit(relative_name, bytes) -> bytes | None` applied to each entry."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        root = src.namelist()[0].split("/", 1)[0] + "/"
        for info in src.infolist():
            data = edit(info.filename[len(root) :], src.read(info.filename))
            if data is not None:
                out.writestr(info, data)
    shutil.copy(source.with_suffix(".yaml"), target.with_suffix(".yaml"))
    return target


def _pt2_with_pickled_weight(clean: Path, tmp_path: Path, marker: Path) -> Path:
    with zipfile.ZipFile(clean) as archive:
        root = archive.namelist()[0].split("/", 1)[0] + "/"
        config = json.loads(archive.read(root + "data/weights/model_weights_config.json"))
    entry = config["config"]["fc.weight"]
    entry["use_pickle"] = True
    weight_file = "data/weights/" + entry["path_name"]

    def edit(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            return json.dumps(config).encode()
        if name == weight_file:
            return _pickle_payload(marker)
        return data

    return _rewrite(clean, tmp_path / "evil.pt2", edit)


def _pt2_with_shape_code(clean: Path, tmp_path: Path, marker: Path) -> Path:
    def edit(name: str, data: bytes) -> bytes:
        if name != "models/model.json":
            return data
        text = data.decode()
        symbol = next(s for s in _expr_strings(json.loads(text)) if s.startswith("Symbol("))
        code = f"exec(\"import os; os.path.isdir('{marker}') or os.mkdir('{marker}')\") or {symbol}"
        return text.replace(json.dumps(symbol), json.dumps(code)).encode()

    return _rewrite(clean, tmp_path / "evil.pt2", edit)


def _expr_strings(node: object) -> list[str]:
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found += [v for k, v in item.items() if k == "expr_str" and isinstance(v, str)]
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
    return found


def _pt2_with_pickled_sample_inputs(clean: Path, tmp_path: Path, marker: Path) -> Path:
    def edit(name: str, data: bytes) -> bytes:
        return _pickle_payload(marker) if name == "data/sample_inputs/model.pt" else data

    return _rewrite(clean, tmp_path / "evil.pt2", edit)


def _pt2_with_opaque_constant(clean: Path, tmp_path: Path, marker: Path) -> Path:
    import pickle

    def edit(name: str, data: bytes) -> bytes:
        if name == "data/constants/model_constants_config.json":
            config = json.loads(data)
            config["config"]["evil"] = {
                "path_name": "opaque_obj_0",
                "is_param": False,
                "use_pickle": True,
                "tensor_meta": None,
            }
            return json.dumps(config).encode()
        return data

    path = _rewrite(clean, tmp_path / "evil.pt2", edit)
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/", 1)[0] + "/"
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(root + "data/constants/opaque_obj_0", pickle.dumps(_RunsCode(marker)))
    return path


PT2_ATTACKS = {
    "pickled weight": (_pt2_with_pickled_weight, "'fc.weight' is stored with pickle"),
    "code in a shape expression": (_pt2_with_shape_code, "a shape expression is not plain arithmetic"),
    "pickled sample inputs": (_pt2_with_pickled_sample_inputs, "holds pickled Python objects"),
    "opaque constant": (_pt2_with_opaque_constant, "'evil' is stored with pickle"),
}


@pytest.mark.parametrize("attack", list(PT2_ATTACKS))
def test_pt2_that_would_run_code_is_refused(attack: str, clean_pt2: Path, tmp_path: Path) -> None:
    make, expected = PT2_ATTACKS[attack]
    evil = make(clean_pt2, tmp_path, tmp_path / "code_ran")
    result = _invoke(["inspect", evil])
    assert not (tmp_path / "code_ran").exists(), result.output
    _one_error_line(result, expected)
    assert "--trust-pickle" in result.output


@pytest.mark.parametrize("attack", list(PT2_ATTACKS))
def test_pt2_attack_is_live_with_trust_pickle(attack: str, clean_pt2: Path, tmp_path: Path) -> None:
    """The control: torch.export.load itself runs each payload, so the refusal above is what stopped it."""
    make, _ = PT2_ATTACKS[attack]
    evil = make(clean_pt2, tmp_path, tmp_path / "code_ran")
    result = _invoke(["inspect", evil, "--trust-pickle"])
    assert (tmp_path / "code_ran").is_dir(), result.output
    assert "Traceback" not in result.output


def test_clean_pt2_still_loads(clean_pt2: Path) -> None:
    result = _invoke(["inspect", clean_pt2])
    assert result.exit_code == 0, result.output
    assert "torch.export" in result.output


def test_static_batch_pt2_says_so(tmp_path: Path) -> None:
    teacher = _export(tmp_path / "static.pt2", dynamic=False, batch=1)
    _one_error_line(_invoke(["inspect", teacher]), "static.pt2 was exported with a static batch axis (batch size 1)")


@pytest.mark.parametrize(
    "target",
    ["torch.os.system", "torch.load", "torch.ops.load_library", "builtins.exec", "_operator.methodcaller",
     "torch.ops.aten.__class__.mro", "torch.ops.mylib.evil.default", "#custom:op", "torch.jit.load"],
)  # fmt: skip
def test_graph_targets_outside_the_tensor_operators_are_refused(target: str) -> None:
    assert not safe_target(target)


def test_graph_targets_of_an_ordinary_program_are_accepted() -> None:
    for target in ("torch.ops.aten.conv2d.default", "_operator.getitem", "torch.sym_max", "math.ceil"):
        assert safe_target(target), target


@pytest.mark.parametrize(
    "expr",
    ["__import__('os').system('x')", "exec('import os')", "Symbol('s0').__class__", "(lambda: 1)()",
     "open('x', 'w')", "Symbol('s0')[0]", "Symbol('__x')", "Integer(2) if True else 1"],
)  # fmt: skip
def test_shape_expressions_that_are_code_are_refused(expr: str) -> None:
    assert not safe_sym_expr(expr)


def test_shape_expressions_torch_writes_are_accepted() -> None:
    for expr in ("Symbol('s77', positive=True, integer=True)", "Mul(Integer(2), Symbol('s0', integer=True))",
                 "FloorDiv(s0, 2) + 1", "Float('1.5', precision=53)", "s0 <= 4096"):  # fmt: skip
        assert safe_sym_expr(expr), expr


# --- 3. every file of a run folder, and the user's own files ------------------------------------------------------


def _plant_pickle_in_student(path: Path, marker: Path) -> None:
    path.write_bytes(_pickle_payload(marker, lambda obj: {"format": "eikd-edge/student", "x": obj}))


def _plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(_pickle_payload(marker))


def _plant_yaml(path: Path, marker: Path) -> None:
    path.write_text(_yaml_payload(marker))


RUN_FILES = {
    "student.pt": ("student.pt", _plant_pickle_in_student, "export", "cannot read student checkpoint"),
    "recipe.resolved.yaml": ("recipe.resolved.yaml", _plant_yaml, "export", "could not determine a constructor"),
    "selection.json": ("selection.json", _plant_pickle, "export", "selection"),
    "export.json": ("export/export.json", _plant_pickle, "validate", "export.json"),
    "metrics.json (report)": ("metrics.json", _plant_pickle, "report", None),
    "bench.json (report)": ("bench.json", _plant_pickle, "report", None),
    "validate.json (report)": ("validate.json", _plant_pickle, "report", None),
}


@pytest.mark.parametrize("case", list(RUN_FILES))
def test_payload_in_a_run_file_does_not_run(case: str, exported: FixtureRun, tmp_path: Path) -> None:
    relative, plant, command, expected = RUN_FILES[case]
    run = _copy(exported, tmp_path)
    plant(run.root / relative, tmp_path / "code_ran")
    result = _invoke(_command(command, run))
    assert not (tmp_path / "code_ran").exists(), result.output
    _clean(result)  # refused with one line, or read around with a note: never a crash
    assert expected is None or expected in " ".join(result.output.split()), result.output


def test_payload_in_a_teacher_sidecar_does_not_run(tmp_path: Path) -> None:
    teacher = save_torchscript(tiny_classifier(), tmp_path / "teacher.pt")
    _plant_yaml(teacher.with_suffix(".yaml"), tmp_path / "code_ran")
    result = _invoke(["inspect", teacher])
    assert not (tmp_path / "code_ran").exists()
    _one_error_line(result, "teacher.yaml")


def test_payload_in_a_recipe_file_does_not_run(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"train:\n  epochs: !!python/object/apply:os.mkdir ['{tmp_path / 'code_ran'}']\n")
    result = _invoke(["distill", "-t", script_teacher, "-u", digit_images, "-o", tmp_path / "run", "--recipe", recipe])
    assert not (tmp_path / "code_ran").exists()
    _one_error_line(result, "recipe.yaml")


def _distill_args(teacher: Path, pool: Path, out: Path, *extra: str) -> list[str]:
    sets = [arg for item in FAST for arg in ("--set", item)]
    return ["distill", "-t", teacher, "-u", pool, "-o", out, *sets, *extra]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory, script_teacher: Path, digit_images: Path) -> Path:
    out = tmp_path_factory.mktemp("hostile-distill") / "run"
    result = _invoke(_distill_args(script_teacher, digit_images, out))
    assert result.exit_code == 0, result.output
    return out


def test_payload_in_train_state_does_not_run(
    distilled: Path, tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(distilled, run)
    _plant_pickle(run / "train_state.pt", tmp_path / "code_ran")
    result = _invoke(_distill_args(script_teacher, digit_images, run, "--resume"))
    assert not (tmp_path / "code_ran").exists(), result.output
    assert "Traceback" not in result.output and result.exit_code != 0


def test_payload_in_the_teacher_outputs_cache_does_not_run(
    distilled: Path, tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    """A damaged or hostile cache is recomputed: the run succeeds and the payload never runs."""
    run = tmp_path / "run"
    shutil.copytree(distilled, run)
    _plant_pickle(run / "cache" / "teacher_outputs.pt", tmp_path / "code_ran")
    result = _invoke(_distill_args(script_teacher, digit_images, run, "--overwrite"))
    assert not (tmp_path / "code_ran").exists(), result.output
    assert result.exit_code == 0, result.output


def test_payload_in_the_synthetic_outputs_cache_does_not_run(tmp_path: Path, script_teacher: Path) -> None:
    """Data-free distillation scores RUN/synthetic through RUN/cache/synthetic_outputs.pt."""
    run = tmp_path / "run"
    (run / "cache").mkdir(parents=True)
    _plant_pickle(run / "cache" / "synthetic_outputs.pt", tmp_path / "code_ran")
    sets = [*FAST, "synthesis.steps=2", "synthesis.batch_size=8", "selection.keep_fraction=1.0"]
    args = ["distill", "-t", script_teacher, "-o", run, "--synthesize", "16"]
    result = _invoke(args + [arg for item in sets for arg in ("--set", item)])
    assert not (tmp_path / "code_ran").exists(), result.output
    _clean(result)


# --- 12. Rich markup in names is text ---------------------------------------------------------------------------

HOSTILE_CLASSES = ["[/]", "[link=http://x]evil[/link]", *(f"c{i}" for i in range(8))]


def test_markup_in_class_names_is_printed_as_written(tmp_path: Path, digit_images: Path) -> None:
    teacher = save_torchscript(tiny_classifier(), tmp_path / "teacher.pt")
    write_sidecar(teacher, {**SPEC, "classes": HOSTILE_CLASSES})
    shown = _invoke(["inspect", teacher])
    assert shown.exit_code == 0, shown.output
    assert "[/], [link=http://x]evil[/link]" in shown.output
    selected = _invoke(["select", "-t", teacher, "-u", digit_images, "-o", tmp_path / "out"])
    assert selected.exit_code == 0, selected.output
    assert "[link=http://x]evil[/link]" in selected.output and "[/]" in selected.output


def test_markup_in_an_error_is_printed_as_written(tmp_path: Path) -> None:
    missing = tmp_path / "[/]" / "[link=http:x]t[/link].pt"
    _one_error_line(_invoke(["inspect", missing]), "[link=http:x]t[/link].pt")


# --- 15. library warnings do not reach the terminal as Python warnings ------------------------------------------


def test_library_warnings_become_one_note(exported: FixtureRun, tmp_path: Path) -> None:
    """A TorchScript teacher whose class names the plot font cannot draw: matplotlib warns once per glyph, with
    its source path; the user sees one note instead."""
    run = _copy(exported, tmp_path)
    teacher = tmp_path / "teacher.pt"
    shutil.copy(exported.teacher, teacher)
    classes = ["猫", "犬", *(f"c{i}" for i in range(8))]
    spec = yaml.safe_load(exported.teacher.with_suffix(".yaml").read_text())
    teacher.with_suffix(".yaml").write_text(yaml.safe_dump({**spec, "classes": classes}, allow_unicode=True))
    _point_recipe_at(run, teacher, trust_pickle=False)
    payload = torch.load(run.run.student, weights_only=True)
    payload["spec"]["classes"], payload["classes"] = classes, classes
    torch.save(payload, run.run.student)
    selection = json.loads(run.run.selection.read_text())
    selection["classes"] = classes
    for row in selection["manifest"]:
        row["predicted"] = classes[int(row["predicted"])]
    run.run.selection.write_text(json.dumps(selection, ensure_ascii=False))
    env = {**os.environ, "EIKD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    env.pop("EIKD_DEBUG", None)
    command = [sys.executable, "-m", "eikd_edge", "report", str(run.root)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Warning:" not in done.stderr and ".py:" not in done.stderr, done.stderr
    assert done.stderr.count("the plots' font lacks some characters") == 1, done.stdout + done.stderr
