"""Folder-level API used by the CLI: validate everything, run into a folder, resume, re-render."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import NormprobeError
from .results import REPORT_FILE, RunResult


def run_to_folder(model: str, out: str | Path, *, probes: list[str], overwrite: bool = False,
                  plotlyjs: str = "inline", progress: bool = True, resume: bool = False,
                  checkpoint_every: int | None = None, **run_kwargs: Any) -> Path:
    """Validate inputs and the folder (before any model loads), run with checkpoints, save atomically.

    With `resume=True`, `out` is an interrupted or failed run's folder: the run continues from its
    checkpoint and must ask for exactly the same model, corpus and options.
    """
    from .runner import make_runner
    from .store import RunFolder, check_same_run

    if checkpoint_every is not None and checkpoint_every < 1:
        raise NormprobeError(f"--checkpoint-every must be at least 1 (got {checkpoint_every})")
    runner = make_runner(model, probes=probes, **run_kwargs)
    out = Path(out)
    if resume:
        folder, saved_meta, checkpoint = RunFolder.for_resume(out)
        check_same_run(saved_meta.get("request", {}), runner.request())
        state = (saved_meta, checkpoint)
    else:
        folder, state = RunFolder.create(out, overwrite), None
    result = runner.execute(progress=progress, folder=folder, resume=state, checkpoint_every=checkpoint_every)
    try:
        result.save(out, overwrite=True, plotlyjs=plotlyjs)
    except NormprobeError as exc:
        folder.mark(dict(result.meta), "failed", str(exc))
        raise
    folder.remove_checkpoint()
    return out


def rerender(folder: str | Path, out: str | Path | None = None, plotlyjs: str = "inline") -> Path:
    """Re-render a report from saved tables; a run that is not complete is rendered as partial."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NormprobeError(f"run folder not found: {folder}")
    result = RunResult.load(folder)
    status = result.meta.get("status", "complete")
    if status != "complete":
        print(f"normprobe: warning: run in {folder} is {status}, not complete; rendering only what was saved",
              file=sys.stderr)
    return result.to_html(Path(out) if out else folder / REPORT_FILE, plotlyjs=plotlyjs)
