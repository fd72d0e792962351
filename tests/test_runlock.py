"""The run-folder lock: filelock's native lock with eikd-edge's holder record, and the pid-record fallback.

Whole-command behaviour (a second writer refused naming the first, a killed holder's lock taken over, two
distills racing) is in test_run_folder_safety.py; these check the lock itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import filelock
import pytest

from eikd_edge import runlock
from eikd_edge.runlock import LOCK_NAME, RunLocked, run_lock

_HOLD = """
import sys
from eikd_edge.runlock import run_lock
with run_lock(sys.argv[1], "export"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_the_lock_excludes_any_filelock_user_and_records_the_holder(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(str(tmp_path / LOCK_NAME), timeout=0).acquire()
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        assert record["command"] == "export" and isinstance(record["since"], int)
        refused = rf"`eikd-edge export` \(pid {holder.pid} on "
        with pytest.raises(RunLocked, match=refused), run_lock(tmp_path, "report"):
            pass
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not (tmp_path / LOCK_NAME).exists()  # released and removed
    with run_lock(tmp_path, "report"):  # and free again
        assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "report"


def test_without_flock_the_pid_record_decides(tmp_path: Path) -> None:
    """The fallback for file systems without flock: a dead holder on this host is taken over, a live one refused."""
    path = tmp_path / LOCK_NAME
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "command": "distill"}))
    release = runlock._acquire_by_record(path, tmp_path, "report")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release()
    assert not path.exists()
    parent = os.getppid()  # alive for as long as this test runs
    path.write_text(json.dumps({"pid": parent, "host": socket.gethostname(), "command": "distill", "since": 0}))
    with pytest.raises(RunLocked, match=f"pid {parent}"):
        runlock._acquire_by_record(path, tmp_path, "report")
    assert json.loads(path.read_text())["pid"] == parent  # the live holder's record is left alone
