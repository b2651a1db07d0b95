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


def loaded_line(name: str, seconds: float, n_layers: int, d_model: int, device: Any) -> str:
    """What was loaded, once it is: the layers, the width and where it sits."""
    return f"loaded {name} in {seconds:.1f} s: {n_layers} layers, d_model {d_model}, on {device}"


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


def progress_bar(total: int | None, enabled: bool, stream: Any = None, unit: str = "tok", desc: str = "probing") -> Any:
    """A tqdm bar on a terminal; in a log file, one plain line every half minute and one at the end.

    Disabled, it imports nothing: tqdm's notebook detection warns about ipywidgets even then.
    """
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return SilentProgress(total)
    if not _is_terminal(stream):
        return LogProgress(total, stream, unit=unit, desc=desc)
    from tqdm.std import tqdm

    return tqdm(total=total, unit=unit, unit_scale=unit == "tok", file=stream, dynamic_ncols=True, desc=desc)


def progress_complete(bar: Any) -> None:
    """The work ran out before the total that was asked for (--max-tokens past the corpus): the total is what was done."""
    if bar.total and bar.n < bar.total:
        bar.total = bar.n
        if hasattr(bar, "refresh"):
            bar.refresh()


class SilentProgress:
    """The progress interface, saying nothing."""

    def __init__(self, total: int | None):
        self.total, self.n = total, 0

    def update(self, n: int) -> None:
        self.n += int(n)

    def set_postfix(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LogProgress:
    """Progress for non-terminals: tqdm rewrites its line with \\r, which a log keeps, last line twice."""

    def __init__(
        self, total: int | None, stream: Any, every: float = LOG_EVERY_SECONDS, unit: str = "tok", desc: str = "probing"
    ):
        self.total, self.stream, self.every = total, stream, every
        self.noun = "tokens" if unit == "tok" else unit + "s"
        self.unit, self.desc, self.postfix = unit, desc, ""
        self.n = 0
        self.started = self._last = time.monotonic()
        self._printed_at: int | None = None

    def update(self, n: int) -> None:
        self.n += int(n)
        if time.monotonic() - self._last >= self.every:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self) -> None:
        if self._printed_at != self.n:
            self._line()

    def _line(self) -> None:
        seconds = time.monotonic() - self.started
        share = f" of {self.total:,} ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = self.n / seconds if seconds > 0 else 0.0
        rate_text = f"{rate:,.0f}" if self.unit == "tok" else f"{rate:,.2f}"
        print(
            f"{self.desc}: {self.n:,} {self.noun}{share}, {seconds:.0f} s, {rate_text} {self.unit}/s{self.postfix}",
            file=self.stream,
            flush=True,
        )
        self._printed_at, self._last = self.n, time.monotonic()
