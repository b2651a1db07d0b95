"""The single error type normprobe raises for anything a user can fix."""

from __future__ import annotations

from collections.abc import Iterable


class NormprobeError(Exception):
    """A problem with the user's input, model or environment.

    The message is one line that says what is wrong and, where possible, how to fix it.
    The CLI prints it without a traceback and exits with `exit_code`.
    """

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.75) -> str:
    """'; did you mean X?' for the choice closest to a mistyped word (difflib), or ''."""
    import difflib

    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]}?" if close else ""
