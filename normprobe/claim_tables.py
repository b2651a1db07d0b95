"""Claims across runs: several runs' claims frames as one table, side by side, and over training steps.

Pure functions of claims frames (normprobe.claims), so a comparison, a sweep and a test read the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

KEY = ["probe", "claim", "layer", "component"]
MISSING = "missing"  # a claim one run has and another lacks (its probe was not run, or it could not be estimated)


def stack_claims(frames: Sequence[tuple[Any, pd.DataFrame]], column: str = "run") -> pd.DataFrame:
    """One row per (run, probe, claim, layer, component): each run's claims under its label (or step) in `column`.

    Columns of baselines one run lacks are empty for it; every run keeps its own verdict and note.
    """
    parts = [frame.assign(**{column: label}) for label, frame in frames if frame is not None and len(frame)]
    if not parts:
        return pd.DataFrame(columns=[column, *KEY, "value", "ci_low", "ci_high", "verdict", "note"])
    table = pd.concat(parts, ignore_index=True, sort=False)
    table = table[[column, *[c for c in table.columns if c != column]]]
    table["layer"] = table["layer"].astype("Int64")
    return table


def _key_of(row: dict[str, Any]) -> tuple:
    layer = row.get("layer")
    return (row["probe"], row["claim"], None if layer is None or pd.isna(layer) else int(layer), row.get("component") or "")


def side_by_side(table: pd.DataFrame, labels: Sequence[Any], column: str = "run") -> pd.DataFrame:
    """One row per (probe, claim, layer, component); per run its value, interval and verdict ("missing" where
    it lacks the claim). `verdicts_differ` is true where the runs' verdicts are not all alike; those come first."""
    rows: dict[tuple, dict[str, Any]] = {}
    for record in table.to_dict("records"):
        key = _key_of(record)
        row = rows.setdefault(key, dict(zip(KEY, key)))
        label = record[column]
        row[f"{label}: verdict"] = record["verdict"]
        row[f"{label}: value"] = record["value"]
        row[f"{label}: ci_low"] = record["ci_low"]
        row[f"{label}: ci_high"] = record["ci_high"]
    out = []
    for row in rows.values():
        verdicts = [row.setdefault(f"{label}: verdict", MISSING) for label in labels]
        row["verdicts_differ"] = len(set(verdicts)) > 1
        out.append(row)
    columns = KEY + [f"{label}: {part}" for label in labels for part in ("verdict", "value", "ci_low", "ci_high")]
    frame = pd.DataFrame(out, columns=[*columns, "verdicts_differ"])
    if len(frame):
        frame["layer"] = frame["layer"].astype("Int64")
        frame = frame.iloc[(~frame["verdicts_differ"]).argsort(kind="stable")].reset_index(drop=True)
    return frame


def first_holding(table: pd.DataFrame, column: str = "step") -> pd.DataFrame:
    """Per claim (probe, claim, layer, component): the first `column` value (training step) at which it holds,
    its value and interval there, and whether it holds at the last; `first_holds` is missing where it never holds."""
    rows = []
    last = table[column].max() if len(table) else None
    steps = sorted(set(table[column]))
    for record in side_by_side(table, steps, column).to_dict("records"):
        held = [s for s in steps if record.get(f"{s}: verdict") == "holds"]
        there = {p: record.get(f"{held[0]}: {p}") if held else None for p in ("value", "ci_low", "ci_high")}
        rows.append(
            {
                **{k: record[k] for k in KEY},
                "first_holds": held[0] if held else None,
                **there,
                "holds_at_last": bool(held and held[-1] == last),
            }
        )
    frame = pd.DataFrame(rows, columns=[*KEY, "first_holds", "value", "ci_low", "ci_high", "holds_at_last"])
    frame["first_holds"] = frame["first_holds"].astype("Int64")
    frame["layer"] = frame["layer"].astype("Int64")
    return frame


def probes_missing(runs: Sequence[tuple[Any, Any]]) -> list[tuple[str, list[Any]]]:
    """(probe, labels of the runs that lack it) for each probe that some run has and another lacks."""
    have = {label: set(result.meta.get("probes", [])) for label, result in runs}
    every = dict.fromkeys(p for _, result in runs for p in result.meta.get("probes", []))
    return [(p, [label for label, _ in runs if p not in have[label]]) for p in every if any(p not in h for h in have.values())]
