"""A run's tables, findings and metadata; saved as run.json plus one parquet per table."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import NormprobeError
from .jsonio import read_json, write_atomic
from .lock import LOCK_FILE, FolderLock
from .notebook import FigureViews

RUN_FILE = "run.json"
REPORT_FILE = "report.html"
STATE_FILE = "state.pt"


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


def check_output_dir(path: Path, overwrite: bool = False) -> None:
    """Refuse a non-empty folder (unless overwrite) and one that cannot be written, before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NormprobeError(f"output path {path} exists and is not a folder")
    if path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir()) and not overwrite:
        raise NormprobeError(f"output folder {path} exists and is not empty; pass --overwrite or choose another --out")
    nearest = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not nearest.is_dir():
        raise NormprobeError(f"output folder {path} cannot be written ({nearest} is a file, not a folder)")
    _try_writing_in(nearest, path)


def _try_writing_in(folder: Path, target: Path) -> None:
    """Create and remove a scratch folder: permission bits lie to root and on /proc-like file systems."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".normprobe-check-", dir=folder))
    except OSError as exc:
        raise NormprobeError(
            f"output folder {target} cannot be written in {folder}: {exc.strerror or type(exc).__name__}"
        ) from None


@dataclass(repr=False)
class RunResult(FigureViews):
    """What one run measured. `tables` are tidy DataFrames; `findings` maps a probe name to its headline numbers.

    In a notebook it shows a compact summary; `figures()` and `show()` give the report's figures.
    """

    tables: dict[str, pd.DataFrame]
    findings: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    probe_states: dict[str, Any] | None = None  # kept for shard runs, so `normprobe merge` can combine them
    # Null baselines (normprobe.baselines): kind -> its tables, in the run's own schemas, saved in baselines/<kind>/
    baselines: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    baseline_states: dict[str, Any] | None = None  # kind -> merged probe states, for shard runs
    # Probe code the user named (FILE.py[:Class], module:Class or classes) whose own figures() draw their
    # sections; a saved folder never names code that is imported (see docs/security.md).
    probe_modules: list | None = field(default=None, compare=False)

    @property
    def claims(self) -> pd.DataFrame:
        """Every claim with its interval, baselines and verdict (normprobe.claims), computed from the tables
        (and the baselines' tables) whenever those change."""
        from .claims import claims

        given = getattr(self, "baselines", None)
        baselines = given or {}
        key = (id(self.tables), tuple(self.tables), id(given), tuple(baselines), tuple(tuple(t) for t in baselines.values()))
        cached = self.__dict__.get("_claims_cache")
        if cached is None or cached[0] != key:
            cached = (key, claims(self.tables, baselines))
            self.__dict__["_claims_cache"] = cached
        return cached[1]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"RunResult(model={m.get('model')!r}, status={m.get('status', 'complete')!r}, "
            f"tokens={m.get('n_tokens')}, probes={m.get('probes', list(self.findings))}, tables={sorted(self.tables)})"
        )

    def _repr_html_(self) -> str:
        from .notebook import claims_view, esc, run_line, table_html
        from .report import finding_rows

        reason = self.meta.get("status_reason")
        note = f"<br><small>{esc(reason)}</small>" if reason and self.meta.get("status") != "complete" else ""
        return (
            f"<div><b>normprobe run</b>: {esc(run_line(self.meta))}{note}{claims_view(self.claims)}"
            f"{table_html(('probe', 'finding', 'value'), finding_rows(self))}"
            "<small>.figures() gives the report's figures, .show() draws them, .tables holds the data.</small></div>"
        )

    def _sections(self) -> list:
        from .report import sections_for

        return sections_for(self)

    def save(self, out: str | Path, overwrite: bool = False, report: bool = True, plotlyjs: str = "inline") -> Path:
        """Write run.json, one parquet per table and (by default) report.html into `out`."""
        out = Path(out)
        check_output_dir(out, overwrite)
        try:
            out.mkdir(parents=True, exist_ok=True)
            with FolderLock.acquire(out):
                check_output_dir(out, overwrite)  # again, now that no other writer can start
                self._write(out, report, plotlyjs)
        except OSError as exc:
            raise NormprobeError(f"cannot write results to {out}: {exc.strerror or exc}") from None
        return out

    def _write(self, out: Path, report: bool, plotlyjs: str) -> None:
        for name, frame in self.tables.items():
            write_atomic(out / f"{name}.parquet", _parquet_bytes(frame))
        if self.probe_states is not None:
            import io

            import torch

            buffer = io.BytesIO()
            torch.save(self.probe_states, buffer)
            write_atomic(out / STATE_FILE, buffer.getvalue())
        for kind, tables in self.baselines.items():
            where = baseline_folder(out, kind)
            where.mkdir(parents=True, exist_ok=True)
            for name, frame in tables.items():
                write_atomic(where / f"{name}.parquet", _parquet_bytes(frame))
            if self.baseline_states is not None and kind in self.baseline_states:
                import io

                import torch

                buffer = io.BytesIO()
                torch.save(self.baseline_states[kind], buffer)
                write_atomic(where / STATE_FILE, buffer.getvalue())
        if report:
            self.to_html(out / REPORT_FILE, plotlyjs=plotlyjs)
        # run.json last: a folder whose run.json says complete has every file.
        write_atomic(out / RUN_FILE, self.run_json().encode("utf-8"))

    def run_json(self) -> str:
        from .claims import claims_records

        body = {**self.meta, "tables": sorted(self.tables), "findings": self.findings, "claims": claims_records(self.claims)}
        if self.baselines or "baselines" in self.meta:
            records = dict(self.meta.get("baselines") or {})
            body["baselines"] = {
                kind: {**records.get(kind, {}), "tables": sorted(self.baselines.get(kind, {}))}
                for kind in dict.fromkeys([*records, *self.baselines])
            }
        return json.dumps(_json_safe(body), indent=2, sort_keys=False) + "\n"

    def to_html(self, path: str | Path, plotlyjs: str = "inline") -> Path:
        from .report import render_report

        path = Path(path)
        write_atomic(path, render_report(self, plotlyjs=plotlyjs).encode("utf-8"))
        return path

    @classmethod
    def load(cls, folder: str | Path, probe_modules: list | None = None) -> RunResult:
        """A saved run; refuses (one line) a run.json of the wrong shape and a named table that is missing or unreadable.

        Loading and drawing never import code the folder names. A custom probe's sections come from its
        tables, and from its own `figures(tables)` only when you name its code in `probe_modules`
        (FILE.py[:Class], module:Class, or the class) or install it as an entry point.
        """
        from .verify import check_run_json, read_tables

        folder = Path(folder)
        body = read_run_json(folder)
        check_run_json(body, folder)
        tables = read_tables(folder, body.pop("tables", []))
        findings = body.pop("findings", {})
        body.pop("claims", None)  # recomputed from the tables (RunResult.claims)
        baselines = {
            kind: read_tables(baseline_folder(folder, kind), record.pop("tables", []))
            for kind, record in (body.get("baselines") or {}).items()
        }
        if probe_modules:  # resolved now, so a bad --probe-module is one line before anything is drawn
            from .registry import classes_by_name

            probe_modules = list(classes_by_name(probe_modules).values())
        return cls(tables=tables, findings=findings, meta=body, probe_modules=probe_modules, baselines=baselines)


def baseline_folder(folder: str | Path, kind: str) -> Path:
    """Where a baseline's tables live: baselines/<kind>/ inside the run folder."""
    from .baselines import BASELINE_FOLDER

    return Path(folder) / BASELINE_FOLDER / kind


def read_run_json(folder: Path) -> dict[str, Any]:
    return read_json(Path(folder) / RUN_FILE, f"{folder} holds no {RUN_FILE}; is it a normprobe run folder?")


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
