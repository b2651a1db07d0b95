"""Reading the JSON files normprobe depends on (run.json, config.json), with one-line errors."""

from __future__ import annotations

import json
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
