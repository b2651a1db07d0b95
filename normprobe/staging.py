"""Replacing a folder whole: the new contents are written beside it and swapped in only when complete.

A writer that replaces a non-empty folder (`--overwrite`) works in a hidden sibling, `.NAME.new-PID-HEX`,
locked as the folder itself is, and renames it into place at the end; until then the old folder is
untouched, so a full disk, an error or a signal leaves it as it was, never a mix of old and new.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import NormprobeError
from .lock import LOCK_FILE, FolderLock


def is_empty(folder: Path) -> bool:
    """True for a missing folder and for one that holds nothing but its lock file."""
    folder = Path(folder)
    return not folder.is_dir() or not any(p.name != LOCK_FILE for p in folder.iterdir())


def staging_sibling(folder: Path, kind: str = "new") -> Path:
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.{kind}-{os.getpid()}-{os.urandom(4).hex()}")


class StagedFolder:
    """A locked sibling that takes the place of `target` on `commit`; `target` must already be locked by the caller."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.path = staging_sibling(self.target)
        try:
            self.path.mkdir()
        except OSError as exc:
            raise NormprobeError(f"cannot create a folder beside {self.target}: {exc.strerror or exc}") from None
        self._lock: FolderLock | None = FolderLock.acquire(self.path)
        self.kept = False  # given up with a checkpoint worth resuming in it

    def commit(self, target_lock: FolderLock) -> None:
        """Swap the staged folder into place (two renames), then delete the old contents.

        `target_lock` is the caller's lock on `target`: its file leaves with the old folder, and the
        staged folder's lock file arrives with the new one, so each is released where it now lies.
        """
        old = staging_sibling(self.target, "old")
        os.rename(self.target, old)
        try:
            os.rename(self.path, self.target)
        except OSError:
            os.rename(old, self.target)  # put the old folder back: nothing is lost
            raise
        target_lock.path = old / LOCK_FILE
        assert self._lock is not None
        self._lock.path = self.target / LOCK_FILE
        self._lock.release()
        self._lock = None
        self.path = self.target
        shutil.rmtree(old, ignore_errors=True)

    def give_up(self, checkpoint: str) -> None:
        """Abandon an unfinished replacement, keeping the sibling when `checkpoint` is in it (to resume)."""
        self.kept = (self.path / checkpoint).is_file()
        self.abandon(keep=self.kept)

    def note(self, what: str) -> str:
        """What an error says after `give_up`: the target is unchanged, and where the new `what` is if kept."""
        return f"; {self.target} is unchanged" + (f" and the new {what} is in {self.path}" if self.kept else "")

    def abandon(self, keep: bool = False) -> None:
        """Release the staged folder; delete it unless `keep` (a checkpoint worth resuming is in it).

        Only the first call after the lock was taken acts: a later one (a `finally` after an
        `except` that kept it) leaves what the first decided.
        """
        if self._lock is None:
            return
        self._lock.release()
        self._lock = None
        if not keep:
            shutil.rmtree(self.path, ignore_errors=True)
