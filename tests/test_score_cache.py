"""The teacher's scores shared between runs: a second run with the same teacher and pool skips scoring; an entry
someone else may have written is read as a hostile file (ignored with a note and scored again, never trusted)."""

from __future__ import annotations

import io
import json
import os
import pickle
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eikd_edge.cli import app
from eikd_edge.models.teacher import load_teacher
from eikd_edge.scoring import scan_folder, score_pool
from tests.conftest import save_torchscript, tiny_classifier, write_sidecar

runner = CliRunner()
REUSED = "teacher scores: reused from"


def _select(teacher: Path, pool: Path, out: Path, *extra: str):
    args = ["select", "-t", str(teacher), "-u", str(pool), "-o", str(out), *extra]
    result = runner.invoke(app, args, terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "teacher-scores").glob("*.npz")) if (cache / "teacher-scores").is_dir() else []


def _selection(out: Path) -> dict:
    """selection.json without its timing (scoring_s is 0.0 when the scores were reused)."""
    data = json.loads((out / "selection.json").read_text())
    data["pool"].pop("scoring_s", None)
    return data


def _only_entry(cache: Path) -> Path:
    entries = _entries(cache)
    assert len(entries) == 1, entries
    return entries[0]


def test_second_select_into_another_folder_reuses_the_scores(
    script_teacher: Path, digit_images: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "shared"
    first = _select(script_teacher, digit_images, tmp_path / "a", "--cache-dir", str(cache))
    assert REUSED not in first.output
    entry = _only_entry(cache)
    stamp, content = entry.stat().st_mtime_ns, entry.read_bytes()

    second = _select(script_teacher, digit_images, tmp_path / "b", "--cache-dir", str(cache))
    assert f"{REUSED} {entry} (120 images)" in second.output.replace("\n", "")
    assert entry.stat().st_mtime_ns == stamp and entry.read_bytes() == content  # read, not rewritten
    assert _selection(tmp_path / "b") == _selection(tmp_path / "a")
    assert json.loads((tmp_path / "b" / "selection.json").read_text())["pool"]["scoring_s"] == 0.0
    assert (tmp_path / "b" / "cache" / "teacher_outputs.pt").is_file()  # the run folder keeps its own copy


def test_default_cache_folder_is_under_xdg_cache_home(script_teacher: Path, digit_images: Path, tmp_path: Path) -> None:
    home = Path(os.environ["XDG_CACHE_HOME"])
    _select(script_teacher, digit_images, tmp_path / "a")
    entry = _only_entry(home / "eikd-edge")
    second = _select(script_teacher, digit_images, tmp_path / "b")
    assert f"{REUSED} {entry}" in second.output.replace("\n", "")


def test_cache_dir_none_disables_it(script_teacher: Path, digit_images: Path, tmp_path: Path) -> None:
    home = Path(os.environ["XDG_CACHE_HOME"])
    _select(script_teacher, digit_images, tmp_path / "a", "--cache-dir", "none")
    second = _select(script_teacher, digit_images, tmp_path / "b", "--cache-dir", "none")
    assert REUSED not in second.output
    assert not any(home.rglob("*.npz"))
    assert json.loads((tmp_path / "b" / "selection.json").read_text())["pool"]["scoring_s"] > 0


def test_another_teacher_or_pool_is_another_entry(script_teacher: Path, digit_images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "shared"
    _select(script_teacher, digit_images, tmp_path / "a", "--cache-dir", str(cache))
    other_teacher = save_torchscript(tiny_classifier(seed=1), tmp_path / "other.pt")
    write_sidecar(other_teacher)
    by_teacher = _select(other_teacher, digit_images, tmp_path / "b", "--cache-dir", str(cache))
    assert REUSED not in by_teacher.output
    assert len(_entries(cache)) == 2

    pool = tmp_path / "pool"
    pool.mkdir()
    for image in sorted(digit_images.glob("*.png"))[:30]:
        (pool / image.name).write_bytes(image.read_bytes())
    _select(script_teacher, pool, tmp_path / "c", "--cache-dir", str(cache))
    (pool / "0000.png").write_bytes((digit_images / "0031.png").read_bytes())  # same name, another image
    changed = _select(script_teacher, pool, tmp_path / "d", "--cache-dir", str(cache))
    assert REUSED not in changed.output
    assert len(_entries(cache)) == 4


# --- hostile entries: each is ignored with a note, scored again, and replaced by a good entry --------------------


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _rewrite(entry: Path, change) -> None:
    with np.load(entry, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    entry.unlink()
    with open(entry, "wb") as handle:
        np.savez(handle, **arrays)


def _wrong_shape(entry: Path, marker: Path) -> None:
    _rewrite(entry, lambda a: a.update(logits=np.zeros((a["logits"].shape[0], 3), np.float32)))


def _nan(entry: Path, marker: Path) -> None:
    def poison(arrays: dict) -> None:
        arrays["embeddings"][5, 0] = np.nan

    _rewrite(entry, poison)


def _outside_path(entry: Path, marker: Path) -> None:
    def escape(arrays: dict) -> None:
        meta = json.loads(arrays["meta"].tobytes())
        meta["paths"][0] = "../../etc/passwd"
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    _rewrite(entry, escape)


def _pickle_file(entry: Path, marker: Path) -> None:
    entry.write_bytes(pickle.dumps({"logits": _RunsCode(marker)}))


def _pickle_in_npy(entry: Path, marker: Path) -> None:
    def plant(arrays: dict) -> None:
        arrays["logits"] = np.array([_RunsCode(marker)], dtype=object)

    with np.load(entry, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    plant(arrays)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.save(member, array, allow_pickle=True)
            archive.writestr(f"{name}.npy", member.getvalue())
    entry.write_bytes(buffer.getvalue())


def _truncated(entry: Path, marker: Path) -> None:
    entry.write_bytes(entry.read_bytes()[:1000])


TAMPERED = {
    "wrong shape": (_wrong_shape, "logits has shape"),
    "NaN": (_nan, "embeddings holds NaN or Inf"),
    "path outside the pool": (_outside_path, "not in the pool"),
    "a pickle named .npz": (_pickle_file, "not a valid score file"),
    "a pickled object array in the .npy": (_pickle_in_npy, "not a valid score file"),
    "truncated": (_truncated, "not a valid score file"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_entry_is_ignored_and_scored_again(
    case: str, script_teacher: Path, digit_images: Path, tmp_path: Path
) -> None:
    tamper, reason = TAMPERED[case]
    cache = tmp_path / "shared"
    _select(script_teacher, digit_images, tmp_path / "a", "--cache-dir", str(cache))
    entry = _only_entry(cache)
    marker = tmp_path / "code_ran"
    tamper(entry, marker)

    second = _select(script_teacher, digit_images, tmp_path / "b", "--cache-dir", str(cache))
    output = second.output.replace("\n", "")
    assert not marker.exists()
    assert REUSED not in output
    assert "note: ignored the cached teacher scores in" in output and reason in output, output
    assert json.loads((tmp_path / "b" / "selection.json").read_text())["pool"]["scoring_s"] > 0
    assert _selection(tmp_path / "b") == _selection(tmp_path / "a")

    third = _select(script_teacher, digit_images, tmp_path / "c", "--cache-dir", str(cache))
    assert REUSED in third.output  # the bad entry was replaced by a good one


def test_unwritable_cache_folder_is_a_note_not_an_error(
    script_teacher: Path, digit_images: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _select(script_teacher, digit_images, tmp_path / "a", "--cache-dir", str(blocker))
    assert "note: could not save the teacher scores" in result.output.replace("\n", "")
    assert (tmp_path / "a" / "selection.json").is_file()


# --- the entry file itself -----------------------------------------------------------------------------------------


def test_concurrent_writers_of_one_entry_leave_a_whole_file(
    script_teacher: Path, digit_images: Path, tmp_path: Path
) -> None:
    """Two runs finishing the same pool at once: every read sees no entry or a whole one, never half of one."""
    from eikd_edge.score_cache import Expected, read_entry, write_entry

    teacher = load_teacher(script_teacher)
    cache = tmp_path / "shared"
    scores = score_pool(teacher, digit_images, torch.device("cpu"), shared=cache)
    entry = _only_entry(cache)
    key = entry.stem
    scan = scan_folder(digit_images)
    expected = Expected(key, [p.relative_to(scan.root).as_posix() for p in scan.paths], 10, scores.embeddings.shape[1])
    cached = read_entry(entry, expected)
    assert cached is not None
    entry.unlink()
    failures: list[BaseException] = []
    seen: list[int] = []

    def write() -> None:
        try:
            for _ in range(15):
                write_entry(entry, key, cached)
        except BaseException as exc:  # reported below
            failures.append(exc)

    def read() -> None:
        try:
            for _ in range(60):
                found = read_entry(entry, expected)
                if found is not None:
                    assert torch.equal(found.logits, scores.logits)
                    seen.append(1)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert read_entry(entry, expected) is not None
    assert not [p for p in entry.parent.iterdir() if p != entry]  # no temp left behind


def test_an_oversized_entry_is_refused_before_it_is_read(
    script_teacher: Path, digit_images: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "shared"
    _select(script_teacher, digit_images, tmp_path / "a", "--cache-dir", str(cache))
    entry = _only_entry(cache)
    with open(entry, "r+b") as handle:
        handle.truncate(256 << 20)  # sparse: costs no disk
    second = _select(script_teacher, digit_images, tmp_path / "b", "--cache-dir", str(cache))
    assert "more than this pool's scores can take" in second.output.replace("\n", "")
