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
    _check_digests(body.get("table_sha256"), "'table_sha256'", bad)
    _check_baselines(body.get("baselines"), bad)
    seconds = body.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
        raise bad(f"'seconds' is {seconds!r}, not a number")


def _check_digests(digests: Any, what: str, bad) -> None:
    if digests is not None and not (
        isinstance(digests, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items())
    ):
        raise bad(f"{what} must map table names to sha256 digests")


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
        _check_digests(record.get("table_sha256"), f"baselines[{kind!r}]['table_sha256']", bad)
        for key in ("n_tokens", "n_windows", "n_batches"):
            value = record.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise bad(f"baselines[{kind!r}][{key!r}] is {value!r}, not a count")


def inside_folder(root: Path, path: Path) -> Path:
    """`path` when it (after links) lies inside `root`: a table linked out of its folder is refused."""
    try:
        resolved, base = Path(path).resolve(), Path(root).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise NormprobeError(f"{path} cannot be opened ({exc})") from None
    if not resolved.is_relative_to(base):
        raise NormprobeError(f"{path} links outside its folder {root}; a saved folder's files must lie inside it")
    return resolved


def read_table(root: Path, path: Path, expected_sha256: Any = None) -> Any:
    """One parquet table of a run or trace folder: inside it, a regular file within TABLE_LIMIT, and (when
    run.json records one) of the recorded sha256; one line naming the file otherwise."""
    import hashlib
    import io

    import pandas as pd

    from .jsonio import TABLE_LIMIT, read_bytes

    inside_folder(root, path)
    data = read_bytes(path, TABLE_LIMIT)
    if isinstance(expected_sha256, str) and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise NormprobeError(f"{path} is not the table this run wrote (its sha256 differs from the one run.json records)")
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a corrupt file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise NormprobeError(f"{path.parent} is damaged: table {path.name} cannot be read ({first})") from None


def read_tables(folder: Path, names: list[str], digests: Any = None, root: Path | None = None) -> dict[str, Any]:
    """Every table run.json names; a missing or unreadable one is an error, never silently left out."""
    digests = digests if isinstance(digests, dict) else {}
    tables = {}
    for name in names:
        path = Path(folder) / f"{name}.parquet"
        if not path.is_file():
            raise NormprobeError(f"{folder} is damaged: run.json names table {name!r} but {path.name} is missing")
        tables[name] = read_table(Path(root or folder), path, digests.get(name))
    return tables


# -- the tables that feed claims --------------------------------------------------------
KEY_COLUMNS = ("site", "layer", "position_group", "component", "position", "alpha", "head")


def check_tables(tables: dict[str, Any], body: dict[str, Any], where: Path) -> None:
    """Layers within the model, counts that are counts, and replicate tables with 0..B-1 once per key."""
    import numpy as np
    import pandas as pd

    n_layers = body.get("n_layers")
    request = body.get("request") or {}
    replicates = request.get("replicates") if isinstance(request, dict) else None
    for name, frame in tables.items():
        path = Path(where) / f"{name}.parquet"

        def bad(what: str, path: Path = path) -> NormprobeError:
            return NormprobeError(f"{path} is damaged or not this run's: {what}")

        if "layer" in frame.columns:
            if not pd.api.types.is_integer_dtype(frame["layer"]):
                raise bad(f"its layer column holds {frame['layer'].dtype}, not integers")
            if len(frame) and (
                int(frame["layer"].min()) < 0 or (isinstance(n_layers, int) and int(frame["layer"].max()) > n_layers)
            ):
                raise bad(f"its layers run {int(frame['layer'].min())}..{int(frame['layer'].max())}, outside 0..{n_layers}")
        if "count" in frame.columns:
            if not pd.api.types.is_integer_dtype(frame["count"]) or (len(frame) and int(frame["count"].min()) < 0):
                raise bad("its count column is not a count")
        if "replicate" not in frame.columns or not name.endswith("_replicates"):
            continue
        if not pd.api.types.is_integer_dtype(frame["replicate"]):
            raise bad(f"its replicate column holds {frame['replicate'].dtype}, not integers")
        keys = [c for c in KEY_COLUMNS if c in frame.columns]
        if isinstance(replicates, int) and not isinstance(replicates, bool) and len(frame):
            index = frame["replicate"].to_numpy()
            if int(index.min()) < 0 or int(index.max()) >= replicates:
                raise bad(f"its replicate indices run {int(index.min())}..{int(index.max())}, not 0..{replicates - 1}")
            sizes = frame.groupby(keys, sort=False).size().to_numpy() if keys else np.array([len(frame)])
            if (sizes != replicates).any() or frame.duplicated([*keys, "replicate"]).any():
                raise bad(f"it does not hold replicates 0..{replicates - 1} once for every key (run.json says B={replicates})")
        main = tables.get(name[: -len("_replicates")])
        if main is not None and "layer" in main.columns and "layer" in frame.columns:
            extra = set(frame["layer"].unique().tolist()) - set(main["layer"].unique().tolist())
            if extra:
                raise bad(f"it has layers {sorted(extra)[:5]} that {name[: -len('_replicates')]}.parquet does not")


def check_baseline_tables(kind: str, tables: dict[str, Any], main: dict[str, Any], body: dict[str, Any], where: Path) -> None:
    """A baseline's tables are checked like the run's, and must have the schema of the run's own tables."""
    check_tables(tables, body, where)
    for name, frame in tables.items():
        ours = main.get(name)
        if ours is not None and list(ours.columns) != list(frame.columns):
            raise NormprobeError(f"{Path(where) / f'{name}.parquet'} does not have the columns of the run's own {name} table")


BASELINE_IDENTITY = "baseline.json"


def baseline_identity(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """What ties a baselines/<kind>/ folder to its run: the kind, the model, the corpus and the request."""
    from .jsonio import request_digest

    given = body.get("request")
    request: dict[str, Any] = given if isinstance(given, dict) else {}
    return {
        "format": "normprobe baseline 1",
        "kind": kind,
        "model": body.get("model"),
        "resolved_model": body.get("resolved_model"),
        "corpus_sha256": request.get("corpus_sha256"),
        "replicates": request.get("replicates"),
        "request_sha256": request_digest(request),
    }


def check_baseline_identity(folder: Path, kind: str, body: dict[str, Any], required: bool) -> None:
    """baselines/<kind>/baseline.json must be the one this run wrote for this kind (another model's, corpus's
    or kind's folder copied in is one line); runs saved before it was written pass without it."""
    from .jsonio import read_json

    path = Path(folder) / BASELINE_IDENTITY
    if not path.exists():
        if required:
            raise NormprobeError(f"{path} is missing; run.json says this run wrote it")
        return
    inside_folder(folder.parent.parent, path)
    saved = read_json(path, f"{path} is missing")
    if not isinstance(saved, dict):
        raise NormprobeError(f"{path} is damaged: it holds {_kind(saved)}, not an object")
    for key, value in baseline_identity(kind, body).items():
        if saved.get(key) != value:
            what = {"request_sha256": "request (model, corpus, options)", "corpus_sha256": "corpus (sha256)"}.get(key, key)
            raise NormprobeError(
                f"{path} belongs to another baseline or run: its {what} ({saved.get(key)!r}) is not this run's ({value!r})"
            )


# -- trace folders ------------------------------------------------------------------------
def check_trace(meta: Any, table: Any, folder: Path, table_too: bool = True) -> None:
    """A trace's run.json and trace.parquet: the shape normprobe writes, one row per (doc, layer, position)."""
    import numpy as np
    import pandas as pd

    where = Path(folder) / "run.json"

    def bad(what: str, path: Path = where) -> NormprobeError:
        return NormprobeError(f"{path} is damaged or not a normprobe trace: {what}")

    if not isinstance(meta, dict):
        raise bad(f"it holds {_kind(meta)}, not an object")
    for key in ("n_layers", "n_docs", "n_tokens", "top_k"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key in ("n_layers", "n_docs") else 0):
            raise bad(f"{key!r} is {value!r}, not a count")
    if not isinstance(meta.get("readout"), dict):
        raise bad(f"'readout' is {_kind(meta.get('readout'))}, not an object")
    ids, texts = meta.get("token_ids"), meta.get("texts")
    if not isinstance(ids, list) or len(ids) != meta["n_docs"] or not all(isinstance(d, list) for d in ids):
        raise bad("'token_ids' must be a list of n_docs lists")
    if not all(isinstance(i, int) and not isinstance(i, bool) for d in ids for i in d) or sum(map(len, ids)) != meta["n_tokens"]:
        raise bad("'token_ids' must hold n_tokens integer ids")
    if not isinstance(texts, list) or len(texts) != meta["n_docs"] or not all(isinstance(s, str) for s in texts):
        raise bad("'texts' must be a list of n_docs strings")
    path = Path(folder) / "trace.parquet"
    n_layers = meta["n_layers"]
    if not table_too:
        return
    if len(table) != (n_layers + 1) * meta["n_tokens"]:
        raise bad(f"it has {len(table)} rows, not (n_layers + 1) x n_tokens = {(n_layers + 1) * meta['n_tokens']}", path)
    for column in ("doc", "layer", "position", "token_id"):
        if not pd.api.types.is_integer_dtype(table[column]):
            raise bad(f"its {column} column holds {table[column].dtype}, not integers", path)
    doc, layer, position = (table[c].to_numpy() for c in ("doc", "layer", "position"))
    if len(table):
        lengths = np.array([len(d) for d in ids], dtype=np.int64)
        if doc.min() < 0 or doc.max() >= meta["n_docs"] or layer.min() < 0 or layer.max() > n_layers or position.min() < 0:
            raise bad("a doc or layer lies outside the run.json's documents and layers", path)
        if (position >= lengths[doc]).any():
            raise bad("a position lies beyond its document's tokens", path)
        if table.duplicated(["doc", "layer", "position"]).any():
            raise bad("a (doc, layer, position) appears twice", path)
    for column in ("top_ids", "top_logprobs", "top_tokens"):
        if not all(isinstance(v, (list, np.ndarray)) and len(v) <= meta["top_k"] for v in table[column]):
            raise bad(f"its {column} column does not hold lists of at most top_k values", path)
    if not all(isinstance(v, str) for v in table["token"]):
        raise bad("its token column does not hold strings", path)
