"""Graceful stops: the first SIGINT/SIGTERM asks the loop to stop after its batch; a second aborts.

Python runs a signal handler only between bytecodes of the main thread, so a batch inside one long
torch call (which releases the GIL) would not see the second signal until the call returns. A watcher
thread therefore reads the signals from a wakeup socket as they arrive: when the main thread has not
stopped within ABORT_GRACE seconds of the second one, the watcher records the run as interrupted
(run.json written atomically by `on_abort`) and ends the process with status 130.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

from .errors import NormprobeError


class RunInterrupted(NormprobeError):
    """The run stopped on a signal after saving a checkpoint; exit status 130."""

    exit_code = 130

    def __init__(self, message: str, folder: Any = None, resume_here: bool = False):
        super().__init__(message)
        self.folder = folder  # where the checkpoint is, for the resume command
        self.resume_here = resume_here  # the command resumes `folder` itself, not the --out it was given


ABORT_GRACE = 0.5  # seconds the main thread has to act on a second signal before the watcher ends the process
ABORT_EXIT = 130


class StopRequests:
    """Installs SIGINT and SIGTERM handlers for the duration of a run (main thread only).

    `on_abort`, when given, is called from the watcher thread just before it ends the process on a
    second signal that the main thread could not act on (see the module's docstring).
    """

    def __init__(self, unit: str = "batch", on_abort: Any = None) -> None:
        self.requested: str | None = None
        self.unit = unit  # what the loop finishes before it stops: a batch, a training step
        self.on_abort = on_abort
        self._previous: dict[int, Any] = {}
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._previous_fd = -1
        self._done = threading.Event()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            self._done.set()  # the main thread acts on it itself: the watcher stands down
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
            self._start_watcher()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_fd)
            for end in self._wakeup:
                end.close()  # the watcher's recv returns, and it ends
            self._wakeup = None

    def _start_watcher(self) -> None:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        try:
            self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):  # not the main thread of the main interpreter
            reader.close()
            writer.close()
            return
        self._wakeup = (reader, writer)
        threading.Thread(target=self._watch, args=(reader,), name="normprobe-signals", daemon=True).start()

    def _watch(self, reader: socket.socket) -> None:
        wanted = {int(signal.SIGINT), int(signal.SIGTERM)}
        seen = 0
        while seen < 2:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            seen += sum(1 for b in data if b in wanted)
        if self._done.wait(ABORT_GRACE):
            return  # the main thread's handler ran (or the run ended): it stops the run itself
        self.abort()

    def abort(self) -> None:
        """End the process now, from the watcher: the run is recorded as interrupted first."""
        try:
            if self.on_abort is not None:
                self.on_abort()
        finally:
            try:
                os.write(2, f"normprobe: second signal: stopped during the {self.unit}; the last checkpoint is kept\n".encode())
            except OSError:
                pass
            if not self._done.is_set():
                os._exit(ABORT_EXIT)
