"""A run's tables, claims and metadata; saved as run.json plus one parquet per table."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from .errors import NormprobeError
from .jsonio import _json_safe, read_json, write_atomic
from .lock import LOCK_FILE, FolderLock

RUN_FILE = "run.json"
REPORT_FILE = "report.html"
STATE_FILE = "state.pt"

Loaded = TypeVar("Loaded", bound="RunTables")  # load() gives the class it is called on: RunResult.load, a RunResult


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


def write_folder(out: Path, overwrite: bool, write: Any) -> Path:
    """Fill folder `out` with `write(folder)`, under its lock; a non-empty `out` (with `overwrite`) is replaced whole.

    The new folder is written beside the old one (normprobe.staging) and renamed into place only when
    complete, so a full disk or an error leaves the old one as it was, never a mix of the two. A fresh
    folder is written in place (and removed again on failure).
    """
    import shutil

    from .staging import StagedFolder, is_empty

    out = Path(out)
    check_output_dir(out, overwrite)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = FolderLock.acquire(out)
        try:
            check_output_dir(out, overwrite)  # again, now that no other writer can start
            if is_empty(out):
                write(out)
                return out
            staged = StagedFolder(out)
            try:
                write(staged.path)
                staged.commit(lock)
            finally:
                staged.abandon()
        finally:
            lock.release()
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


@dataclass(repr=False)
class RunTables:
    """What one run measured. `tables` are tidy DataFrames; `claims` are its only conclusions.

    The data only: it saves, loads and verifies, and draws nothing. `normprobe.RunResult` (a subclass, in
    normprobe.run_result, above the report) adds the figures, the notebook's view and report.html.
    """

    tables: dict[str, pd.DataFrame]
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
            cached = (key, claims(self.tables, baselines, n_documents=self.meta.get("n_docs")))
            self.__dict__["_claims_cache"] = cached
        return cached[1]

    @property
    def findings(self) -> dict[str, dict[str, Any]]:
        """Each probe's descriptive numbers (its `findings(tables)`), recomputed from the tables and never saved.

        They describe the tables (the figures draw some of them); they conclude nothing: `claims` does.
        """
        return {name: self.descriptive(name) for name in self.meta.get("probes", [])}

    def descriptive(self, probe: str) -> dict[str, Any]:
        """One probe's descriptive numbers, from its own tables; {} when its code is not at hand."""
        cache = self.__dict__.setdefault("_descriptive_cache", {})
        key = (probe, id(self.tables), tuple(self.tables))
        if key not in cache:
            cache[key] = descriptive_numbers(probe, self.tables, self.meta, self.probe_modules)
        return cache[key]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"{type(self).__name__}(model={m.get('model')!r}, status={m.get('status', 'complete')!r}, "
            f"tokens={m.get('n_tokens')}, probes={m.get('probes', [])}, tables={sorted(self.tables)})"
        )

    def save(
        self, out: str | Path, overwrite: bool = False, report: bool = True, plotlyjs: str = "inline", in_place: bool = False
    ) -> Path:
        """Write run.json, one parquet per table and (by default) report.html (`to_html`, a RunResult's) into `out`.

        A non-empty `out` (with `overwrite`) is replaced whole once the new folder is complete
        (`write_folder`); `in_place` writes into it instead, for the run that owns the folder.
        """
        out = Path(out)
        check_output_dir(out, overwrite)
        try:
            if in_place:
                out.mkdir(parents=True, exist_ok=True)
                with FolderLock.acquire(out):
                    self._write(out, report, plotlyjs)
            else:
                write_folder(out, overwrite, lambda folder: self._write(folder, report, plotlyjs))
        except OSError as exc:
            raise NormprobeError(f"cannot write results to {out}: {exc.strerror or exc}") from None
        return out

    def _write(self, out: Path, report: bool, plotlyjs: str) -> None:
        import hashlib

        from .verify import BASELINE_IDENTITY, baseline_identity

        digests: dict[str, dict[str, str]] = {"": {}}  # run.json records each table's sha256, checked on load

        def table(path: Path, frame: pd.DataFrame, kind: str = "") -> None:
            data = _parquet_bytes(frame)
            write_atomic(path, data)
            digests.setdefault(kind, {})[path.stem] = hashlib.sha256(data).hexdigest()

        for name, frame in self.tables.items():
            table(out / f"{name}.parquet", frame)
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
                table(where / f"{name}.parquet", frame, kind)
            identity = baseline_identity(kind, self.meta)  # what ties the folder to this run and kind
            write_atomic(where / BASELINE_IDENTITY, (json.dumps(_json_safe(identity), indent=2) + "\n").encode("utf-8"))
            if self.baseline_states is not None and kind in self.baseline_states:
                import io

                import torch

                buffer = io.BytesIO()
                torch.save(self.baseline_states[kind], buffer)
                write_atomic(where / STATE_FILE, buffer.getvalue())
        if report:
            self.to_html(out / REPORT_FILE, plotlyjs=plotlyjs)
        # run.json last: a folder whose run.json says complete has every file.
        write_atomic(out / RUN_FILE, self.run_json(digests).encode("utf-8"))

    def run_json(self, digests: dict[str, dict[str, str]] | None = None) -> str:
        """The run.json text; `digests` (kind, "" for the run's own -> table -> sha256) when the tables were just written."""
        from .claims import claims_records

        # one block of conclusions: the claims (descriptive numbers stay in the tables)
        body = {**self.meta, "tables": sorted(self.tables), "claims": claims_records(self.claims)}
        body.pop("table_sha256", None)  # only digests of the tables written with this run.json
        if digests is not None:
            body["table_sha256"] = dict(sorted(digests.get("", {}).items()))
        if self.baselines or "baselines" in self.meta:
            records = dict(self.meta.get("baselines") or {})
            body["baselines"] = {
                kind: {
                    **{k: v for k, v in _without_findings(records.get(kind) or {}).items() if k != "table_sha256"},
                    "tables": sorted(self.baselines.get(kind, {})),
                    **(
                        {"table_sha256": dict(sorted(digests.get(kind, {}).items()))}
                        if digests is not None and kind in self.baselines
                        else {}
                    ),
                }
                for kind in dict.fromkeys([*records, *self.baselines])
            }
        return json.dumps(_json_safe(body), indent=2, sort_keys=False) + "\n"

    def to_html(self, path: str | Path, plotlyjs: str = "inline") -> Path:
        """The report page; drawing lives above this layer, in `normprobe.RunResult`."""
        raise NotImplementedError("RunTables draws nothing: normprobe.RunResult writes report.html")

    @classmethod
    def load(cls: type[Loaded], folder: str | Path, probe_modules: list | None = None) -> Loaded:
        """A saved run; refuses (one line) a run.json of the wrong shape and a named table that is missing or unreadable.

        Loading and drawing never import code the folder names. A custom probe's sections come from its
        tables, and from its own `figures(tables)` only when you name its code in `probe_modules`
        (FILE.py[:Class], module:Class, or the class) or install it as an entry point.
        """
        from .verify import check_baseline_identity, check_baseline_tables, check_run_json, check_tables, read_tables

        folder = Path(folder)
        body = read_run_json(folder)
        check_run_json(body, folder)
        tables = read_tables(folder, body.pop("tables", []), body.pop("table_sha256", None))
        check_tables(tables, body, folder)
        body.pop("findings", None)  # older folders carry findings: ignored, the claims are the conclusions
        body.pop("claims", None)  # recomputed from the tables (RunTables.claims)
        baselines = {}
        for kind, record in (body.get("baselines") or {}).items():
            where = baseline_folder(folder, kind)
            if isinstance(record, dict):
                record.pop("findings", None)
            digests = record.pop("table_sha256", None)
            check_baseline_identity(where, kind, body, required=digests is not None)
            baselines[kind] = read_tables(where, record.pop("tables", []), digests, root=folder)
            check_baseline_tables(kind, baselines[kind], tables, body, where)
        if probe_modules:  # resolved now, so a bad --probe-module is one line before anything is drawn
            from .registry import classes_by_name

            probe_modules = list(classes_by_name(probe_modules).values())
        return cls(tables=tables, meta=body, probe_modules=probe_modules, baselines=baselines)


def _without_findings(record: Any) -> Any:
    return {k: v for k, v in record.items() if k != "findings"} if isinstance(record, dict) else record


def descriptive_numbers(probe: str, tables: dict[str, pd.DataFrame], meta: dict[str, Any], probe_modules: list | None) -> dict:
    """A probe's `findings(tables)` from its own tables, with its code found only where the user put it."""
    from .registry import classes_by_name, saved_probe_class

    own = {n: tables[n] for n in (meta.get("probe_tables") or {}).get(probe, []) if n in tables}
    if not own:
        return {}
    if probe == "massive":  # its numbers depend on the run's --massive-ratio
        from .probes import DEFAULT_MASSIVE_RATIO
        from .probes.massive import massive_findings

        return massive_findings(own, float((meta.get("request") or {}).get("massive_ratio") or DEFAULT_MASSIVE_RATIO))
    if probe == "lens_diagnostics":
        from .lens_diagnostics import LensDiagnosticsProbe

        return LensDiagnosticsProbe.findings(own)
    found = saved_probe_class(probe, classes_by_name(probe_modules), required=False)
    try:
        return dict(found.findings(own)) if found is not None and hasattr(found, "findings") else {}
    except TypeError:  # a custom probe whose findings() is not a classmethod: nothing to describe it by
        return {}


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
