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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NormprobeError(f"{path} is not valid JSON ({exc})") from None
