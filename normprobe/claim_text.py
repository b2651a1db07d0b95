"""A claims frame (normprobe.claims) as rows of text: the cells every view of the claims prints.

The report's table, the notebook's summary and a comparison read these same cells, so they cannot disagree.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .claims import baselines_of, value_text, where_text


def claims_head(frame: pd.DataFrame) -> list[str]:
    slugs = baselines_of(frame)
    return (
        ["probe", "claim", "where", "model value [CI]", "null"]
        + [h for s in slugs for h in (f"{s.replace('_', '-')} [CI]", "difference [CI]")]
        + ["min effect", "verdict"]
        + (["reason"] if "reason" in frame else [])
        + ["note"]
    )


def claims_rows(frame: pd.DataFrame) -> list[list[str]]:
    """One row of text per claim: model value [CI], each baseline [CI], difference [CI], verdict."""
    slugs = baselines_of(frame)
    rows = []
    for row in frame.to_dict("records"):
        cells = [row["probe"], row["claim"], where_text(row), value_text(row), number_text(row["null"])]
        for slug in slugs:
            cells += [
                value_text(row, slug + "_"),
                f"{number_text(row[slug + '_difference'])} [{number_text(row[slug + '_difference_ci_low'])}, "
                f"{number_text(row[slug + '_difference_ci_high'])}]",
            ]
        note = row.get("note") or ""
        if row["claim"] == "descent" and row.get("check_value") == row.get("check_value"):
            checked = {"value": row["check_value"], "ci_low": row["check_ci_low"], "ci_high": row["check_ci_high"]}
            check = f"actual loss change {value_text(checked)}"
            note = f"{check}; {note}" if note else check
        cells += [number_text(row["min_effect"]), row["verdict"]]
        if "reason" in frame:
            cells.append(optional_text(row.get("reason")))
        cells.append(note)
        rows.append([str(c) for c in cells])
    return rows


def optional_text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def number_text(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def interval_note(frame: pd.DataFrame) -> str:
    units = sorted(set(frame["interval"].dropna())) if len(frame) else []
    return (
        "Intervals are 95%: " + "; ".join(units) + ". A claim holds only when its interval excludes the null "
        "and its difference from every baseline excludes 0 by at least the minimum effect; it does not hold when "
        "the interval lies on the other side of the null; otherwise it is undetermined."
    )
