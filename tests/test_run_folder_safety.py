"""Run folders under careless and hostile use: nothing a user made is destroyed, nothing poisoned is accepted.

Real runs of the CLI on tiny real models and real digit images: --overwrite with a mistyped input, a user's files
in a run, two writers at once, --resume with other inputs, crafted manifest paths, leftovers of killed commands.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.data import scan_images
from eikd_edge.export.fieldset import run_field_images
from eikd_edge.models.spec import InputSpec
from eikd_edge.models.teacher import load_teacher
from eikd_edge.run import RunPaths
from eikd_edge.scoring import score_pool
from tests.conftest import SPEC, restore_sigint, save_torchscript, write_sidecar
from tests.run_fixture import FixtureRun, fresh_run

runner = CliRunner()
LOCK_NAME = ".eikd-edge.lock"
FAST = ["train.epochs=1", "train.batch_size=16", "student.width=0.5", "selection.batch_size=64"]
SETS = [arg for item in FAST for arg in ("--set", item)]


@pytest.fixture(autouse=True)
def _no_debug_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EIKD_DEBUG", "")


def _distill(teacher: Path, pool: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "-t", str(teacher), "-u", str(pool), "-o", str(out), *SETS, *extra]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (the lock and nothing else excluded), by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def _one_line_error(output: str, *words: str) -> None:
    assert "Traceback" not in output and "internal error" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for word in words:
        assert word in " ".join(output.split()), output


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, script_teacher: Path, digit_images: Path) -> Path:
    """A finished run (its training state kept, so it can be resumed) with an export record, validate/bench/report
    files and a user's own files beside them."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = runner.invoke(app, _distill(script_teacher, digit_images, out, "--keep-state"))
    assert result.exit_code == 0, result.output
    (out / "export").mkdir()
    for name in ("export/student.onnx", "export/export.json", "export/build_engine.sh", "validate.json",
                 "bench.json", "report.json", "report.md", "report.html"):  # fmt: skip
        (out / name).write_text(f"old {name}")
    (out / "export" / "important.txt").write_text("the user's own notes")
    (out / "notes.md").write_text("mine too")
    return out


@pytest.fixture()
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


# --- item 4: --overwrite validates first, and the old run survives any failure before the new checkpoint ----------


def test_overwrite_with_a_mistyped_pool_keeps_every_old_file(
    run_copy: Path, script_teacher: Path, digit_images: Path
) -> None:
    before = _snapshot(run_copy)
    result = runner.invoke(app, _distill(script_teacher, digit_images.parent / "no-such-pool", run_copy, "--overwrite"))
    assert result.exit_code == 1
    _one_line_error(result.output, "image folder not found")
    assert _snapshot(run_copy) == before


def test_overwrite_failing_after_selection_puts_the_old_run_back(
    run_copy: Path, script_teacher: Path, digit_images: Path, tmp_path: Path
) -> None:
    """A labeled folder whose sub-folders are not teacher classes fails only after the pool was scored."""
    val = tmp_path / "val"
    (val / "not-a-class").mkdir(parents=True)
    shutil.copy(digit_images / "0000.png", val / "not-a-class" / "a.png")
    before = _snapshot(run_copy)
    result = runner.invoke(app, [*_distill(script_teacher, digit_images, run_copy, "--overwrite"), "--val", str(val)])
    assert result.exit_code == 1
    _one_line_error(result.output, "not teacher classes")
    assert _snapshot(run_copy) == before
    assert not (run_copy / ".eikd-edge-previous").exists()


# --- item 5: only the tool's files go; a folder that is not a run is refused -------------------------------------


def test_overwrite_removes_only_the_tools_files_and_the_old_runs_reports(
    run_copy: Path, script_teacher: Path, digit_images: Path
) -> None:
    result = runner.invoke(app, _distill(script_teacher, digit_images, run_copy, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert (run_copy / "export" / "important.txt").read_text() == "the user's own notes"
    assert (run_copy / "notes.md").read_text() == "mine too"
    for stale in ("validate.json", "bench.json", "report.json", "report.md", "report.html", "export/student.onnx",
                  "export/export.json", "export/build_engine.sh"):  # fmt: skip
        assert not (run_copy / stale).exists(), stale
    assert (run_copy / "student.pt").is_file() and (run_copy / "metrics.json").is_file()
    assert not (run_copy / ".eikd-edge-previous").exists() and not (run_copy / ".eikd-edge-discard").exists()


def test_a_folder_that_only_looks_like_a_run_is_refused(
    tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    folder = tmp_path / "mine"
    (folder / "export").mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "export" / "important.txt").write_text("keep")
    (folder / "recipe.resolved.yaml").write_text("just: a file of mine\n")  # not written by eikd-edge
    before = _snapshot(folder)
    for extra in ((), ("--overwrite",)):
        result = runner.invoke(app, _distill(script_teacher, digit_images, folder, *extra))
        assert result.exit_code == 1
        _one_line_error(result.output, "not an eikd-edge run folder")
    result = runner.invoke(app, ["select", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(folder)])
    assert result.exit_code == 1 and "not an eikd-edge run folder" in result.output
    assert _snapshot(folder) == before


# --- select: refuses an existing run, leaves no folder behind when it fails ------------------------------------------


def test_select_refuses_an_existing_run_unless_overwrite(
    run_copy: Path, script_teacher: Path, digit_images: Path
) -> None:
    args = ["select", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(run_copy)]
    before = _snapshot(run_copy)
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1
    _one_line_error(refused.output, "already holds a run", "--overwrite")
    assert _snapshot(run_copy) == before
    replaced = runner.invoke(app, [*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert not (run_copy / "student.pt").exists()  # a new selection replaces the whole run, never half of it
    assert (run_copy / "export" / "important.txt").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already holds a selection" in again.output


def test_a_failed_select_or_distill_leaves_no_folder_behind(
    tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "new" / "sel"
    result = runner.invoke(app, ["select", "-t", str(script_teacher), "-u", str(empty), "-o", str(out)])
    assert result.exit_code == 1 and "no images found" in result.output
    assert not out.exists()
    val = tmp_path / "val"
    (val / "not-a-class").mkdir(parents=True)
    shutil.copy(digit_images / "0000.png", val / "not-a-class" / "a.png")
    result = runner.invoke(app, [*_distill(script_teacher, digit_images, out), "--val", str(val)])
    assert result.exit_code == 1 and "not teacher classes" in result.output
    assert not out.exists()  # the pool was scored and selection.json written, then all of it removed
    assert not out.parent.exists()  # nor the parent folder it created


def test_a_failed_select_removes_every_folder_it_created(tmp_path: Path, script_teacher: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "a" / "b" / "sel"
    result = runner.invoke(app, ["select", "-t", str(script_teacher), "-u", str(empty), "-o", str(out)])
    assert result.exit_code == 1 and "no images found" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# --- item 7: one writer at a time ------------------------------------------------------------------------------------

_HOLD = """
import sys, time
from eikd_edge.runlock import run_lock
with run_lock(sys.argv[1], "distill"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(root: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(root), str(seconds)], env=env,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_naming_the_holder(run_copy: Path, script_teacher: Path, digit_images: Path) -> None:
    before = _snapshot(run_copy)
    process = _holder(run_copy, 60)
    try:
        commands = [
            _distill(script_teacher, digit_images, run_copy, "--overwrite"),
            ["select", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(run_copy), "--overwrite"],
            ["export", str(run_copy), "--onnx"],
            ["validate", str(run_copy)],
            ["bench", str(run_copy)],
            ["report", str(run_copy)],
            ["synthesize", "-t", str(script_teacher), "-n", "2", "-o", str(run_copy / "synthetic")],
        ]
        for command in commands:
            result = runner.invoke(app, command)
            assert result.exit_code == 1, (command[0], result.output)
            _one_line_error(result.output, "is in use by `eikd-edge distill`", f"pid {process.pid}")
    finally:
        process.kill()
        process.wait()
    assert _snapshot(run_copy) == before


def test_two_distills_into_one_folder_one_wins(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    """Two real processes: the second exits 1 naming the first, and the folder holds only the first's run."""
    out = tmp_path / "run"
    env = {**os.environ, "EIKD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "eikd_edge", *_distill(script_teacher, digit_images, out)]
    first = subprocess.Popen([*base, "--set", "train.epochs=100000"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (out / "train_state.pt").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        second = subprocess.run([*base, "--overwrite", "--set", "train.lr=0.0123"], env=env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
    finally:
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 3, first_err[-1500:]
    assert second.returncode == 1, second.stderr[-1500:]
    assert f"pid {first.pid}" in " ".join(second.stderr.split()) and "Traceback" not in second.stderr
    resolved = (out / "recipe.resolved.yaml").read_text()
    assert "epochs: 100000" in resolved and "lr: 0.0123" not in resolved
    assert not (out / LOCK_NAME).exists()


def test_a_stale_lock_of_a_killed_command_is_taken_over(run_copy: Path) -> None:
    from eikd_edge.runlock import run_lock

    process = _holder(run_copy, 60)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (run_copy / LOCK_NAME).exists()  # the record of the dead holder is still there
    with run_lock(run_copy, "report"):
        record = json.loads((run_copy / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "report"
    assert not (run_copy / LOCK_NAME).exists()


# --- item 8: --resume checks its inputs before writing anything --------------------------------------------------


class _Wide(nn.Module):
    """A teacher with 12 classes, where the run's teacher has 10."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def test_resume_with_another_pool_or_teacher_rewrites_nothing(
    run_copy: Path, script_teacher: Path, digit_images: Path, tmp_path: Path
) -> None:
    other_pool = tmp_path / "other-pool"
    shutil.copytree(digit_images, other_pool)
    (other_pool / "0000.png").unlink()
    wide = save_torchscript(_Wide().eval(), tmp_path / "wide.pt")
    write_sidecar(wide, {**SPEC, "classes": [f"c{i}" for i in range(12)]})
    before = _snapshot(run_copy)
    cases = [
        (_distill(script_teacher, other_pool, run_copy, "--resume"), "other field images"),
        (_distill(wide, digit_images, run_copy, "--resume"), "another teacher"),
        (_distill(script_teacher, digit_images, run_copy, "--resume", "--set", "train.lr=0.01"), "different recipe"),
    ]
    for command, words in cases:
        result = runner.invoke(app, command)
        assert result.exit_code == 1, (words, result.output)
        _one_line_error(result.output, words)
        assert _snapshot(run_copy) == before
    resumed = runner.invoke(app, _distill(script_teacher, digit_images, run_copy, "--resume"))
    assert resumed.exit_code == 0, resumed.output


def test_resume_after_the_pool_changed_in_place_is_refused(
    tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(digit_images, pool)
    out = tmp_path / "run"
    assert runner.invoke(app, _distill(script_teacher, pool, out, "--keep-state")).exit_code == 0
    before = _snapshot(out)
    shutil.copy(pool / "0001.png", pool / "0001-again.png")
    result = runner.invoke(app, _distill(script_teacher, pool, out, "--resume"))
    assert result.exit_code == 1
    _one_line_error(result.output, "other field images", "files were added, removed or changed")
    assert _snapshot(out) == before


# --- item 9: paths -------------------------------------------------------------------------------------------------


def test_selection_records_an_absolute_root_usable_from_anywhere(
    tmp_path: Path, script_teacher: Path, digit_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    shutil.copytree(digit_images, work / "field")
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["select", "-t", str(script_teacher), "-u", "field", "-o", "sel"])
    assert result.exit_code == 0, result.output
    root = json.loads((work / "sel" / "selection.json").read_text())["pool"]["root"]
    assert Path(root).is_absolute() and Path(root) == work / "field"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = InputSpec.from_dict(SPEC)
    images = run_field_images(RunPaths(work / "sel"), spec, "parity", 8)
    assert len(images) == 8 and images.source == "field pool (gate split)"  # decoded from here


@pytest.fixture()
def exported(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    return fresh_run(tmp_path_factory, "crafted")


@pytest.mark.parametrize("crafted", ["../../secret.png", "ABSOLUTE"])
def test_manifest_paths_outside_the_pool_are_refused(exported: FixtureRun, tmp_path: Path, crafted: str) -> None:
    secret = tmp_path / "secret.png"
    shutil.copy(next(exported.pool.glob("*.png")), secret)  # a real image outside the pool: it would decode
    path = str(secret) if crafted == "ABSOLUTE" else os.path.relpath(secret, exported.pool)
    selection = json.loads(exported.run.selection.read_text())
    for entry in selection["manifest"]:
        entry["path"] = path  # every group (holdout, selected, rejected) points at it
    exported.run.selection.write_text(json.dumps(selection))
    for command in (["export", str(exported.root), "--onnx"], ["report", str(exported.root), "--no-confusion"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, (command[0], result.output)
        _one_line_error(result.output, "points outside its image folder")
    assert not (exported.root / "report.html").exists()


def test_the_pool_cache_is_rescored_when_the_folder_moves(tmp_path: Path, digit_images: Path) -> None:
    teacher_path = save_torchscript(_Wide().eval(), tmp_path / "t.pt")
    write_sidecar(teacher_path, {**SPEC, "classes": [f"c{i}" for i in range(12)]})
    teacher = load_teacher(teacher_path)
    first = tmp_path / "a"
    shutil.copytree(digit_images, first, copy_function=shutil.copy2)  # same names, sizes and mtimes
    cache = tmp_path / "cache.pt"
    assert not score_pool(teacher, first, torch.device("cpu"), 64, cache).from_cache
    assert score_pool(teacher, first, torch.device("cpu"), 64, cache).from_cache
    moved = tmp_path / "b"
    first.rename(moved)
    again = score_pool(teacher, moved, torch.device("cpu"), 64, cache)
    assert not again.from_cache and again.root == moved


def test_the_scan_skips_run_folders_inside_the_pool(tmp_path: Path, digit_images: Path) -> None:
    field = tmp_path / "field"
    shutil.copytree(digit_images, field)
    count = len(scan_images(field))
    old_run = field / "runs" / "old"
    (old_run / "synthetic").mkdir(parents=True)
    (old_run / "recipe.resolved.yaml").write_text("eikd_edge_version: 0.1.0\ninputs: {}\n")
    for i in range(5):
        shutil.copy(field / "0000.png", old_run / "synthetic" / f"synth_{i:06d}.png")
    being_written = field / "new"
    being_written.mkdir()
    shutil.copy(field / "0000.png", being_written / "x.png")
    assert len(scan_images(field, (being_written,))) == count
    assert len(scan_images(field)) == count + 1  # a folder without the mark is field data like any other


def test_distill_into_the_field_folder_does_not_rescan_its_synthetic_images(
    tmp_path: Path, script_teacher: Path, digit_images: Path
) -> None:
    field = tmp_path / "field"
    shutil.copytree(digit_images, field)
    out = field / "run"
    args = [*_distill(script_teacher, field, out), "--synthesize", "6", "--set", "synthesis.steps=2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "selection.json").read_text())["pool"]["files"] == 121 + 6
    rerun = runner.invoke(app, [*args, "--overwrite"])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads((out / "selection.json").read_text())["pool"]["files"] == 121 + 6


# --- item 10: leftovers of killed commands, and one truth about what can be resumed ------------------------------


def test_leftovers_of_killed_commands_are_swept_and_only_those(
    exported: FixtureRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = exported.root
    (root / "export").mkdir(exist_ok=True)
    ours = [root / ".train_state.pt.k2j4h5g6.tmp", root / ".metrics.json.abcdefgh.tmp",
            root / "export" / ".student.onnx.a1b2c3d4.tmp"]  # fmt: skip
    for path in ours:
        path.write_bytes(b"half a file")
    (root / "export" / ".int8-x1y2z3w4").mkdir()
    (root / "export" / ".int8-x1y2z3w4" / "c0.onnx").write_bytes(b"onnx")
    theirs = [root / ".mine.abcdefgh.tmp", root / "export" / ".notes.txt.abcdefgh.tmp", root / "draft.tmp"]
    for path in theirs:
        path.write_text("the user's")
    system_tmp = tmp_path / "systemp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_dir, live_dir = system_tmp / f"eikd-onnx-{dead.stdout.strip()}-abc", system_tmp / f"eikd-onnx-{os.getpid()}-x"
    dead_dir.mkdir()
    live_dir.mkdir()
    result = runner.invoke(app, ["export", str(root), "--onnx"])
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in ours) and not (root / "export" / ".int8-x1y2z3w4").exists()
    assert all(path.read_text() == "the user's" for path in theirs)
    assert not dead_dir.exists() and live_dir.exists()


def test_an_unfinished_run_gets_one_consistent_answer(tmp_path: Path, script_teacher: Path, digit_images: Path) -> None:
    """Killed after selection.json and the recipe, before train_state.pt: both answers point at --overwrite."""
    out = tmp_path / "run"
    selected = runner.invoke(app, ["select", "-t", str(script_teacher), "-u", str(digit_images), "-o", str(out)])
    assert selected.exit_code == 0, selected.output
    recipe = (out / "recipe.resolved.yaml").read_text().replace("stage: select\n", "")
    (out / "recipe.resolved.yaml").write_text(recipe)
    plain = runner.invoke(app, _distill(script_teacher, digit_images, out))
    assert plain.exit_code == 1
    _one_line_error(plain.output, "before its first checkpoint", "--overwrite")
    assert "--resume to" not in plain.output
    resumed = runner.invoke(app, _distill(script_teacher, digit_images, out, "--resume"))
    assert resumed.exit_code == 1
    _one_line_error(resumed.output, "nothing to resume", "before its first checkpoint", "--overwrite")
    assert "drop --resume" not in resumed.output
    assert runner.invoke(app, _distill(script_teacher, digit_images, out, "--overwrite")).exit_code == 0


def test_the_lock_file_name_is_the_tools(tmp_path: Path) -> None:
    from eikd_edge.runlock import LOCK_NAME as name

    assert name == LOCK_NAME


def test_a_replacement_killed_before_its_first_checkpoint_is_undone(run_copy: Path) -> None:
    """The journal a killed --overwrite leaves behind: the next command puts the old run back."""
    from eikd_edge.runfolder import Replacement

    before = _snapshot(run_copy)
    Replacement.begin(RunPaths(run_copy))  # ... and the process dies before commit or rollback
    (run_copy / "selection.json").write_text("{half of a new run}")
    (run_copy / "recipe.resolved.yaml").write_text("eikd_edge_version: new\ninputs: {}\n")
    result = runner.invoke(app, ["validate", str(run_copy), "--images", str(run_copy / "no-such-folder")])
    assert result.exit_code == 1
    assert "previous run was put back" in " ".join(result.output.split())
    assert _snapshot(run_copy) == before


def test_killed_between_student_and_train_state_gets_no_circle(
    run_copy: Path, script_teacher: Path, digit_images: Path
) -> None:
    """student.pt written, train_state.pt not yet: neither answer sends the user to the other."""
    (run_copy / "train_state.pt").unlink()
    plain = runner.invoke(app, _distill(script_teacher, digit_images, run_copy))
    assert plain.exit_code == 1
    _one_line_error(plain.output, "--overwrite")
    assert "--resume" not in plain.output
    resumed = runner.invoke(app, _distill(script_teacher, digit_images, run_copy, "--resume"))
    assert resumed.exit_code == 1
    _one_line_error(resumed.output, "nothing to resume", "--overwrite")
    assert "drop --resume" not in resumed.output
