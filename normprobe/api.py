"""Folder-level API used by the CLI: validate everything, run, save atomically, re-render."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import NormprobeError
from .results import REPORT_FILE, RunResult, check_output_dir


def run_to_folder(model: str, out: str | Path, *, probes: list[str], overwrite: bool = False,
                  plotlyjs: str = "inline", **run_kwargs: Any) -> Path:
    """Validate the output folder first (before any model loads), then run and save."""
    from .runner import run

    out = Path(out)
    check_output_dir(out, overwrite)
    result = run(model, probes=probes, **run_kwargs)
    return result.save(out, overwrite=overwrite, plotlyjs=plotlyjs)


def rerender(folder: str | Path, out: str | Path | None = None, plotlyjs: str = "inline") -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise NormprobeError(f"run folder not found: {folder}")
    result = RunResult.load(folder)
    return result.to_html(Path(out) if out else folder / REPORT_FILE, plotlyjs=plotlyjs)
