"""What a run tells the person watching it, on stderr: status lines and a progress bar that suits logs."""
from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

LOG_EVERY_SECONDS = 30.0


def say(message: str, enabled: bool = True) -> None:
    if enabled:
        print(f"normprobe: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"normprobe: warning: {message}", file=sys.stderr, flush=True)


def model_line(source: Any, dtype: str, device: str) -> str:
    """What is about to load, read from config.json and the safetensors headers only (no weights)."""
    folder = _model_folder(source)
    family = params = None
    if folder is not None:
        try:
            from .families import family_for

            found = family_for(json.loads((folder / "config.json").read_text()).get("model_type", ""))
            family = found.name if found else None
        except (OSError, ValueError):
            pass
        params = safetensors_parameter_count(folder)
    facts = ", ".join(x for x in (family, params is not None and f"{params / 1e6:,.2f}M parameters") if x)
    return f"loading {source.name}{f' ({facts})' if facts else ''}: {dtype} on {device} ..."


def _model_folder(source: Any) -> Path | None:
    if source.kind in ("demo", "local"):
        return Path(source.location)
    try:  # a Hub model already in the cache: its snapshot folder
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.location, "config.json", revision=source.revision)
    except Exception:  # noqa: BLE001 - the line is informative only
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def safetensors_parameter_count(folder: Path) -> int | None:
    """Sum of tensor sizes in the safetensors headers (8-byte length, then JSON); None without safetensors."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for path in files:
            with open(path, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
            for name, entry in header.items():
                if name != "__metadata__":
                    size = 1
                    for dim in entry["shape"]:
                        size *= dim
                    total += size
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return total


def progress_bar(total: int | None, enabled: bool, stream: Any = None) -> Any:
    """A tqdm bar on a terminal; in a log file, one plain line every half minute and one at the end."""
    stream = stream if stream is not None else sys.stderr
    if enabled and not _is_terminal(stream):
        return LogProgress(total, stream)
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, disable=not enabled, file=stream,
                dynamic_ncols=True, desc="probing")


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LogProgress:
    """Progress for non-terminals: tqdm rewrites its line with \\r, which a log keeps, last line twice."""

    def __init__(self, total: int | None, stream: Any, every: float = LOG_EVERY_SECONDS):
        self.total, self.stream, self.every = total, stream, every
        self.n = 0
        self.started = self._last = time.monotonic()
        self._printed_at: int | None = None

    def update(self, n: int) -> None:
        self.n += int(n)
        if time.monotonic() - self._last >= self.every:
            self._line()

    def close(self) -> None:
        if self._printed_at != self.n:
            self._line()

    def _line(self) -> None:
        seconds = time.monotonic() - self.started
        share = f" of {self.total:,} ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = self.n / seconds if seconds > 0 else 0.0
        print(f"probing: {self.n:,} tokens{share}, {seconds:.0f} s, {rate:,.0f} tok/s", file=self.stream, flush=True)
        self._printed_at, self._last = self.n, time.monotonic()
