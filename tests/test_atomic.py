"""Nothing lost: a write that fails half-way (disk full) leaves the previous file byte-identical and no temp file."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from eikd_edge.atomic import DiskFull, write_atomic, write_json_atomic, write_text_atomic
from eikd_edge.checkpoint import save_torch_atomic
from eikd_edge.errors import EikdError


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _half_then_enospc(payload: bytes):
    """A writer that really writes half of `payload` to the temp file, then fails as a full disk does."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(payload[: len(payload) // 2])
            handle.flush()
            os.fsync(handle.fileno())
        assert tmp.stat().st_size == len(payload) // 2  # the partial write is real
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    return write


def test_write_atomic_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"
    write_atomic(target, lambda tmp: tmp.write_bytes(b"one"))
    write_atomic(target, lambda tmp: tmp.write_bytes(b"two"))
    assert target.read_bytes() == b"two"
    assert _listing(target.parent) == ["a.bin"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_disk_full_midway_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "student.pt"
    old = os.urandom(4096)
    target.write_bytes(old)
    before = target.stat()
    with pytest.raises(DiskFull) as info:
        write_atomic(target, _half_then_enospc(os.urandom(1 << 16)))
    assert target.read_bytes() == old
    assert target.stat().st_ino == before.st_ino  # not even replaced by a copy
    assert _listing(tmp_path) == ["student.pt"]  # no .student.pt.*.tmp left behind
    # the CLI shows it as one line with exit code 1, and it is still an OSError with its errno
    error = info.value
    assert isinstance(error, EikdError) and isinstance(error, OSError)
    assert error.errno == errno.ENOSPC and error.exit_code == 1
    assert "no space left" in str(error) and "student.pt" in str(error) and "\n" not in str(error)
    assert isinstance(error.__cause__, OSError)


def test_disk_full_on_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DiskFull):
        write_atomic(tmp_path / "new.json", _half_then_enospc(b"x" * 1000))
    assert _listing(tmp_path) == []


def test_other_errors_propagate_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fails(tmp: Path) -> None:
        tmp.write_text("half")
        raise ValueError("a bug, not a full disk")

    with pytest.raises(ValueError, match="a bug"):
        write_atomic(target, fails)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["a.txt"]


def test_json_and_text_writers_are_atomic_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"a": 1, "path": tmp_path, "n": torch.tensor(3)})
    old = target.read_bytes()
    assert json.loads(old) == {"a": 1, "path": str(tmp_path), "n": 3}

    real_write_text = Path.write_text

    def write_text_then_full(self: Path, data: str, *args: object, **kwargs: object) -> int:
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_text_then_full)
    with pytest.raises(DiskFull):
        write_json_atomic(target, {"b": "x" * 10_000})
    with pytest.raises(DiskFull):
        write_text_atomic(target, "y" * 10_000)
    assert target.read_bytes() == old
    assert _listing(tmp_path) == ["metrics.json"]


def test_save_torch_atomic_disk_full_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save's own bytes, cut half-way by ENOSPC: the previous checkpoint still loads and is unchanged."""
    target = tmp_path / "train_state.pt"
    save_torch_atomic(target, {"epoch": 1, "w": torch.arange(10.0)})
    old = target.read_bytes()

    real_save = torch.save

    def save_half_then_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        handle = f if hasattr(f, "write") else open(f, "wb")  # noqa: SIM115
        handle.write(data[: len(data) // 2])
        handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_full)
    with pytest.raises(DiskFull, match=r"train_state\.pt"):
        save_torch_atomic(target, {"epoch": 2, "w": torch.zeros(100_000)})
    monkeypatch.undo()
    assert target.read_bytes() == old
    assert _listing(tmp_path) == ["train_state.pt"]
    assert torch.load(target, weights_only=True)["epoch"] == 1


def test_save_torch_atomic_real_file_size_limit(tmp_path: Path) -> None:
    """The real write path, really cut short: RLIMIT_FSIZE makes the kernel refuse bytes past 64 KiB (EFBIG)."""
    target = tmp_path / "student.pt"
    script = textwrap.dedent(
        f"""
        import resource, signal, sys, torch
        from pathlib import Path
        from eikd_edge.atomic import DiskFull
        from eikd_edge.checkpoint import save_torch_atomic
        target = Path({str(target)!r})
        save_torch_atomic(target, {{"epoch": 1}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
        try:
            save_torch_atomic(target, {{"epoch": 2, "w": torch.zeros(1_000_000)}})
        except DiskFull as exc:
            print("DISKFULL", exc.errno)
            sys.exit(0)
        sys.exit("the 4 MB write went through a 64 KiB limit")
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"DISKFULL {errno.EFBIG}" in done.stdout
    assert _listing(tmp_path) == ["student.pt"]
    assert torch.load(target, weights_only=True) == {"epoch": 1}
