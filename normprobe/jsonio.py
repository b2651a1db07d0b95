"""Reading the files normprobe depends on (run.json, config.json, tables), with one-line errors.

Every file read from a folder goes through `read_bytes`: a regular file only (a link to /dev/zero,
a FIFO or a device is refused before a byte is read), at most a stated size, read once.

Writing goes through `write_atomic`: a reader sees the whole file or none of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from .errors import NormprobeError

JSON_LIMIT = 64 << 20  # run.json, config.json, dataset metadata: normprobe writes kilobytes
TABLE_LIMIT = 8 << 30  # one parquet table of a run or a trace


def read_bytes(path: Path, limit: int = JSON_LIMIT) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is one line naming the file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except OSError as exc:
        raise NormprobeError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NormprobeError(f"{path} is not a regular file (a device, a pipe or a link to one); refused")
        if info.st_size > limit:
            raise NormprobeError(f"{path} is {info.st_size} bytes, more than the {limit} normprobe reads from such a file")
        chunks, total = [], 0
        while True:  # read no more than the limit, even if the file grows while it is read
            block = os.read(fd, min(1 << 20, limit + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
            if total > limit:
                raise NormprobeError(f"{path} is more than the {limit} bytes normprobe reads from such a file")
        return b"".join(chunks)
    except OSError as exc:
        raise NormprobeError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_json(path: Path, missing: str, limit: int = JSON_LIMIT) -> Any:
    """The parsed file; `missing` is the message when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise NormprobeError(missing)
    data = read_bytes(path, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise NormprobeError(f"{path} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null so run.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def request_digest(request: Any) -> str:
    """sha256 of a request as run.json holds it (JSON-normalised, keys sorted)."""
    normal = json.loads(json.dumps(_json_safe(request)))
    return hashlib.sha256(json.dumps(normal, sort_keys=True).encode("utf-8")).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name beside the target, then rename: a reader sees all or nothing.

    The temporary name is unique to this process and call, and it is removed when writing fails
    (a full disk must not keep a half-written file).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
