"""Graceful stops: the first SIGINT/SIGTERM asks the loop to stop after its batch; a second aborts."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from .errors import NormprobeError


class RunInterrupted(NormprobeError):
    """The run stopped on a signal after saving a checkpoint; exit status 130."""

    exit_code = 130

    def __init__(self, message: str, folder: Any = None):
        super().__init__(message)
        self.folder = folder  # where the checkpoint is, for the resume command


class StopRequests:
    """Installs SIGINT and SIGTERM handlers for the duration of a run (main thread only)."""

    def __init__(self, unit: str = "batch") -> None:
        self.requested: str | None = None
        self.unit = unit  # what the loop finishes before it stops: a batch, a training step
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # second signal: abort at once
        self.requested = signal.Signals(signum).name
        # Said at once: a batch can take minutes (a large model in bfloat16 on a CPU). os.write, not print:
        # the handler may run while the main thread is inside a write to sys.stderr (the progress bar).
        try:
            os.write(
                2,
                f"normprobe: {self.requested} received: will stop after the current {self.unit}; "
                "a second signal stops it now\n".encode(),
            )
        except OSError:
            pass

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
