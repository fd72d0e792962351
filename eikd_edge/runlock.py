"""One writer per run folder: an exclusive lock file that names its holder and dies with it.

Two commands writing the same run folder at once leave a recipe from one run beside a student from the other.
The lock is `filelock`'s native lock on RUN/.eikd-edge.lock (`flock` on Unix, `LockFileEx` on Windows), which the
operating system releases when the holder exits however it exits (crash, SIGKILL, power loss), so a dead holder
never blocks the next command. Once held, the file records the holder's pid, host and command (written through
the lock's own descriptor, `on_acquired`), so the refusal can say who holds it; on release the file is unlinked
while still held, so a waiter that opened the old file sees it is gone and opens the new one.

filelock's own fallback for file systems without `flock` (some network mounts) is a soft marker in its own
format, which would lose the command and start time from the refusal; there the pid record alone decides, as
before: a holder on this host whose pid is gone is stale and is taken over.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from eikd_edge.errors import EikdError

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
    release = _acquire(path, root, command)
    try:
        yield path
    finally:
        release()
        for folder in created:
            try:
                folder.rmdir()  # only when empty: a failed first run leaves no folder behind, parents included
            except OSError:
                break


def holder(root: Path) -> dict[str, Any] | None:
    """The recorded holder of a run folder's lock (it may be stale), or None."""
    return _read_record(Path(root) / LOCK_NAME)


def _acquire(path: Path, root: Path, command: str) -> Callable[[], None]:
    """Take the lock without waiting; the returned function releases it (and removes the file)."""
    for _ in range(50):  # the holder may unlink the file between our open and our lock: try the new file
        held: list[os.stat_result] = []

        def record(fd: int, held: list[os.stat_result] = held) -> None:  # on the held lock's own descriptor
            _write_record(fd, command)
            held.append(os.fstat(fd))

        lock = FileLock(str(path), timeout=0, on_acquired=record, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            if not path.exists():
                continue
            raise RunLocked(_busy_message(root, _read_record(path))) from None
        except OSError as exc:
            if exc.errno in _NO_FLOCK:
                return _acquire_by_record(path, root, command)
            raise EikdError(f"cannot lock {root}: {exc.strerror or exc}") from None
        return lambda: _release(lock, path, held[0] if held else None)
    raise EikdError(f"cannot lock {root}: its lock file keeps changing")


def _release(lock: FileLock, path: Path, held: os.stat_result | None) -> None:
    """Unlink while still holding the lock, then release: a waiter that opened the old file sees it is gone."""
    try:
        if held is not None and os.path.samestat(os.stat(path), held):
            path.unlink()
    except OSError:
        pass
    finally:
        lock.release()


def _acquire_by_record(path: Path, root: Path, command: str) -> Callable[[], None]:
    """No flock on this file system: the pid record decides."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise EikdError(f"cannot lock {root}: {exc.strerror or exc}") from None
    try:
        _refuse_if_alive(path, root)
        _write_record(fd, command)
    except BaseException:
        os.close(fd)
        raise
    return lambda: _release_record(fd, path)


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


def _release_record(fd: int, path: Path) -> None:
    try:
        if _same_file(fd, path):
            path.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)
