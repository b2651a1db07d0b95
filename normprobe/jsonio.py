"""Reading the JSON files normprobe depends on (run.json, config.json), with one-line errors; writing files whole."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import NormprobeError


def read_json(path: Path, missing: str) -> Any:
    """The parsed file; `missing` is the message when it does not exist."""
    if not path.is_file():
        raise NormprobeError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise NormprobeError(f"{path} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    except OSError as exc:
        raise NormprobeError(f"cannot read {path}: {exc.strerror or exc}") from None


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
