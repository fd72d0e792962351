"""One writer per run folder: an exclusive lock file that names its holder and dies with it.

Two commands writing the same run folder at once leave a recipe from one run beside a student from the other.
The lock is `flock` on RUN/.eikd-edge.lock, which the kernel releases when the holder exits however it exits
(crash, SIGKILL, power loss), so a dead holder never blocks the next command; the file also records the holder's
pid, host and command, so the refusal can say who holds it. Where the file system has no `flock` (some network
mounts), the pid record alone decides: a holder on this host whose pid is gone is stale and is taken over.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eikd_edge.errors import EikdError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid record alone
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".eikd-edge.lock"
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


class RunLocked(EikdError):
    """Another command is writing this run folder."""


@contextmanager
def run_lock(root: Path, command: str, create: bool = False) -> Iterator[Path]:
    """Hold the run folder's lock for the body; with `create`, make the folder, and remove it again if the
    command leaves it empty (a failed first run leaves nothing behind)."""
    root = Path(root)
    created: list[Path] = []  # the folders this call made, deepest first (runs/new/sel, then runs/new)
    if not root.exists():
        if not create:
            raise EikdError(f"run folder not found: {root}")
        created = [root, *(p for p in root.parents if not p.exists())]
        try:
            root.mkdir(parents=True)
        except OSError as exc:
            raise EikdError(f"cannot create {root}: {exc.strerror or exc}") from None
    elif not root.is_dir():
        raise EikdError(f"{root} is a file, not a folder")
    path = root / LOCK_NAME
    fd = _acquire(path, root, command)
    try:
        yield path
    finally:
        _release(fd, path)
        for folder in created:
            try:
                folder.rmdir()  # only when empty: a failed first run leaves no folder behind, parents included
            except OSError:
                break


def holder(root: Path) -> dict[str, Any] | None:
    """The recorded holder of a run folder's lock (it may be stale), or None."""
    return _read_record(Path(root) / LOCK_NAME)


def _acquire(path: Path, root: Path, command: str) -> int:
    for _ in range(50):  # another process may unlink the file between our open and our lock: open again
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EikdError(f"cannot lock {root}: {exc.strerror or exc}") from None
        try:
            if not _flock(fd, path, root):
                _refuse_if_alive(path, root)  # no flock here: the pid record decides
            if _same_file(fd, path):
                _write_record(fd, command)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise EikdError(f"cannot lock {root}: its lock file keeps changing")


def _flock(fd: int, path: Path, root: Path) -> bool:
    """True once held; False where the file system cannot flock. A live holder is refused with its name."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        raise RunLocked(_busy_message(root, _read_record(path))) from None
    except OSError as exc:
        if exc.errno in _NO_FLOCK:
            return False
        raise EikdError(f"cannot lock {root}: {exc.strerror or exc}") from None


def _refuse_if_alive(path: Path, root: Path) -> None:
    record = _read_record(path)
    if record is None or record.get("pid") == os.getpid():
        return
    if record.get("host") != socket.gethostname() or pid_alive(record.get("pid")):
        raise RunLocked(_busy_message(root, record))


def _busy_message(root: Path, record: dict[str, Any] | None) -> str:
    if not record:
        who = "another eikd-edge command"
    else:
        since = record.get("since")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, int | float) else "?"
        who = (
            f"`eikd-edge {record.get('command', '?')}` (pid {record.get('pid', '?')} on {record.get('host', '?')}, "
            f"since {started})"
        )
    return f"{root} is in use by {who}; wait for it to finish, or stop it, then run this command again"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _write_record(fd: int, command: str) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": round(time.time())}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read(4096).decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid runs on this host (one owned by another user counts)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _release(fd: int, path: Path) -> None:
    """Unlink while still holding the lock, then close: a waiter that opened the old file sees it is gone."""
    try:
        if _same_file(fd, path):
            path.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)
