"""`--token-counts FILE`: token frequencies from outside the probe corpus (e.g. the training corpus).

The frequency claim correlates a token type's mean norm with its frequency. Counted in a small probe
corpus, most types occur once or twice; a file of counts replaces those counts. Accepted forms: a JSON
object {"token id": count, ...}, or text with one "token_id count" pair a line (comma, tab or space
separated; a header line that is not numbers is skipped).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import NormprobeError

_SPLIT = re.compile(r"[,\t ]+")


def read_token_counts(path: str | Path) -> dict[int, float]:
    """token id -> count; one clear line on anything else."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise NormprobeError(f"--token-counts {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    counts: dict[int, float] = {}
    if text.lstrip().startswith("{"):
        try:
            items = list(json.loads(text).items())
        except (ValueError, AttributeError):
            raise NormprobeError(f"--token-counts {path} is not a JSON object of token id -> count") from None
        lines = [(str(k), str(v)) for k, v in items]
    else:
        lines = [tuple(_SPLIT.split(line.strip())) for line in text.splitlines() if line.strip()]  # type: ignore[misc]
    for number, pair in enumerate(lines, start=1):
        try:
            token_id, count = int(pair[0]), float(pair[1])
        except (ValueError, IndexError):
            if number == 1 and not text.lstrip().startswith("{"):
                continue  # a header
            raise NormprobeError(f"--token-counts {path}: entry {number} is not a token id and a count") from None
        if token_id < 0 or not count >= 0 or count == float("inf"):
            raise NormprobeError(f"--token-counts {path}: entry {number} needs a token id ≥ 0 and a finite count ≥ 0")
        counts[token_id] = counts.get(token_id, 0.0) + count
    if not counts:
        raise NormprobeError(f"--token-counts {path} holds no counts")
    return counts
