"""One writer per folder: an flock on FOLDER/.normprobe.lock, held for the writer's whole life.

The kernel drops an flock when its process dies, however it dies, so a lock file nobody holds is
stale and is simply taken over; and a run.json that says `running` while nobody holds the lock
belongs to a process that is gone (killed with SIGKILL, or a machine that went down).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from .errors import NormprobeError

LOCK_FILE = ".normprobe.lock"
_held: dict[Path, FolderLock] = {}  # re-entrant within one process: a multi-run locks OUT and then OUT/1-model


class FolderLock:
    """The exclusive writer's lock on one folder; `acquire` refuses when another live process holds it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._depth = 0

    @classmethod
    def acquire(cls, folder: Path) -> FolderLock:
        key = Path(folder).resolve()
        lock = _held.get(key)
        if lock is None:
            lock = cls(folder)
            lock._take()
            _held[key] = lock
        lock._depth += 1
        return lock

    def _take(self) -> None:
        # A reader checking the lock holds it for microseconds; retry briefly before refusing.
        deadline = time.monotonic() + 0.5
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise NormprobeError(f"cannot write in {self.folder}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise NormprobeError(f"cannot lock {self.path} for writing: {exc.strerror or exc}") from None
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                holder = read_holder(self.folder)
                raise NormprobeError(
                    f"{self.folder} is being written by another normprobe process "
                    f"(pid {holder or 'unknown'}); wait for it to finish or choose another folder"
                ) from None
            # The file may have been unlinked by a releasing holder between our open and flock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # a full disk: the lock holds without the pid, which others then call unknown
        self._fd = fd

    def release(self) -> None:
        self._depth -= 1
        if self._depth > 0 or self._fd is None:
            return
        _held.pop(self.folder.resolve(), None)
        try:
            self.path.unlink(missing_ok=True)  # unlink while holding, so no one locks a file on its way out
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(folder: Path) -> int | None:
    """The pid written in the folder's lock file, if any."""
    try:
        from .jsonio import read_bytes

        return int(read_bytes(Path(folder) / LOCK_FILE, 64).decode().strip())
    except (OSError, ValueError, NormprobeError):
        return None


def live_holder(folder: Path) -> int | None:
    """The pid of the live process that holds the folder's lock, or None when nobody holds it."""
    folder = Path(folder)
    if folder.resolve() in _held:
        return os.getpid()
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return read_holder(folder) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe_running(folder: Path) -> str:
    """What a run.json that says `running` means: a live run, or a process that died without marking it."""
    pid = live_holder(folder)
    if pid is not None:
        return f"still running (pid {pid if pid > 0 else 'unknown'})"
    return (
        "marked running, but no process holds its lock: the run died without marking it "
        "(killed with SIGKILL, or the machine stopped)"
    )
