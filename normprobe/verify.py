"""Reading a run folder that may have been damaged or tampered with: check before trusting.

`report` and `compare` render only folders whose run.json has the shape normprobe writes and whose
every named table exists and reads; anything else is one line naming what is wrong.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import NormprobeError

STATUSES = ("running", "complete", "interrupted", "failed")
TABLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a file name in the folder, never a path
COUNTS = ("n_docs", "n_windows", "n_tokens", "n_batches", "seq_len", "batch_size", "n_layers", "d_model")
MAPPINGS = ("request", "options", "versions", "probe_tables")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "true/false"}.get(
        type(value), "a number"
    )


def check_run_json(body: Any, folder: Path) -> None:
    """Refuse a run.json that normprobe did not write in this shape; the message names the first problem."""
    where = Path(folder) / "run.json"

    def bad(what: str) -> NormprobeError:
        return NormprobeError(f"{where} is damaged or not a normprobe run.json: {what}")

    if not isinstance(body, dict):
        raise bad(f"it holds {_kind(body)}, not an object")
    status = body.get("status", "complete")
    if status not in STATUSES:
        raise bad(f"status is {status!r}, not one of {', '.join(STATUSES)}")
    tables = body.get("tables", [])
    if not isinstance(tables, list) or not all(isinstance(t, str) and TABLE_NAME.match(t) for t in tables):
        raise bad("'tables' must be a list of table names")
    if status == "complete" and ("tables" not in body or "probes" not in body):
        raise bad("it says complete but names no tables or probes")
    probes = body.get("probes", [])
    if not isinstance(probes, list) or not all(isinstance(p, str) for p in probes):
        raise bad("'probes' must be a list of probe names")
    findings = body.get("findings", {})
    if not isinstance(findings, dict) or not all(isinstance(f, dict) for f in findings.values()):
        raise bad("'findings' must map each probe to an object")
    for key in MAPPINGS:
        if key in body and not isinstance(body[key], dict):
            raise bad(f"{key!r} is {_kind(body[key])}, not an object")
    owners = body.get("probe_tables", {})
    for probe, names in owners.items():
        if not isinstance(names, list) or not set(names) <= set(tables):
            raise bad(f"probe_tables[{probe!r}] names tables that 'tables' does not list")
    for key in COUNTS:
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise bad(f"{key!r} is {value!r}, not a count")
    for key in ("n_layers", "d_model"):  # a model has at least one layer and one dimension: 0 divides by zero later
        if body.get(key) == 0:
            raise bad(f"{key!r} is 0; a model has at least one")
    _check_baselines(body.get("baselines"), bad)
    seconds = body.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
        raise bad(f"'seconds' is {seconds!r}, not a number")


def _check_baselines(baselines: Any, bad) -> None:
    """A baseline's record names a known kind (its folder) and its tables, checked like the run's own."""
    if baselines is None:
        return
    from .baselines import BASELINE_KINDS

    if not isinstance(baselines, dict):
        raise bad(f"'baselines' is {_kind(baselines)}, not an object")
    for kind, record in baselines.items():
        if kind not in BASELINE_KINDS:
            raise bad(f"baseline {kind!r} is not one of {', '.join(BASELINE_KINDS)}")
        if not isinstance(record, dict):
            raise bad(f"baselines[{kind!r}] is {_kind(record)}, not an object")
        tables = record.get("tables", [])
        if not isinstance(tables, list) or not all(isinstance(t, str) and TABLE_NAME.match(t) for t in tables):
            raise bad(f"baselines[{kind!r}]['tables'] must be a list of table names")
        for key in ("n_tokens", "n_windows", "n_batches"):
            value = record.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise bad(f"baselines[{kind!r}][{key!r}] is {value!r}, not a count")


def read_tables(folder: Path, names: list[str]) -> dict[str, Any]:
    """Every table run.json names; a missing or unreadable one is an error, never silently left out."""
    import pandas as pd

    tables = {}
    for name in names:
        path = Path(folder) / f"{name}.parquet"
        if not path.is_file():
            raise NormprobeError(f"{folder} is damaged: run.json names table {name!r} but {path.name} is missing")
        try:
            tables[name] = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a corrupt file
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise NormprobeError(f"{folder} is damaged: table {path.name} cannot be read ({first})") from None
    return tables
