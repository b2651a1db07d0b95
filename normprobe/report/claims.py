"""The claims table and the claim-based summary lines, from a run's claims frame (normprobe.claims) only."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..claims import HOLDS, NO_BASELINE_NOTE, baselines_of, claim_sentence, value_text, where_text
from .common import esc

VERDICT_STYLE = {"holds": "background:#d4edda", "does not hold": "background:#f8d7da", "undetermined": "background:#eee"}


def claims_head(frame: pd.DataFrame) -> list[str]:
    slugs = baselines_of(frame)
    return (
        ["probe", "claim", "where", "model value [CI]", "null"]
        + [h for s in slugs for h in (f"{s.replace('_', '-')} [CI]", "difference [CI]")]
        + ["min effect", "verdict", "note"]
    )


def claims_rows(frame: pd.DataFrame) -> list[list[str]]:
    """One row of text per claim: model value [CI], each baseline [CI], difference [CI], verdict."""
    slugs = baselines_of(frame)
    rows = []
    for row in frame.to_dict("records"):
        cells = [row["probe"], row["claim"], where_text(row), value_text(row), _num(row["null"])]
        for slug in slugs:
            cells += [
                value_text(row, slug + "_"),
                f"{_num(row[slug + '_difference'])} [{_num(row[slug + '_difference_ci_low'])}, "
                f"{_num(row[slug + '_difference_ci_high'])}]",
            ]
        note = row.get("note") or ""
        if row["claim"] == "descent" and row.get("check_value") == row.get("check_value"):
            checked = {"value": row["check_value"], "ci_low": row["check_ci_low"], "ci_high": row["check_ci_high"]}
            check = f"actual loss change {value_text(checked)}"
            note = f"{check}; {note}" if note else check
        cells += [_num(row["min_effect"]), row["verdict"], note]
        rows.append([str(c) for c in cells])
    return rows


def _num(value: Any) -> str:
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


def claims_html(frame: pd.DataFrame) -> str:
    """The report's claims section: caveats, then the table with verdicts coloured."""
    if frame is None or not len(frame):
        return ""
    head = "".join(f"<th>{esc(h)}</th>" for h in claims_head(frame))
    body = []
    for cells in claims_rows(frame):
        verdict = cells[-2]
        body.append(
            "<tr>"
            + "".join(
                f'<td style="{VERDICT_STYLE.get(verdict, "")}">{esc(c)}</td>' if i == len(cells) - 2 else f"<td>{esc(c)}</td>"
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    notes = [interval_note(frame)]
    if not baselines_of(frame):
        notes.insert(0, NO_BASELINE_NOTE[0].upper() + NO_BASELINE_NOTE[1:] + ".")
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<h2 id="claims">Claims</h2><ul class="notes">{items}</ul><table><tr>{head}</tr>{"".join(body)}</table>'


def claims_summary_lines(frame: pd.DataFrame, probes: list[str]) -> list[str]:
    """Per probe, one line: what holds (with effect, interval and what it was tested against), and how many
    of the rest do not hold or are undetermined. Built from the claims frame only."""
    lines = []
    slugs = baselines_of(frame)
    against = ("null and " + ", ".join(s.replace("_", "-") for s in slugs)) if slugs else "the null only"
    for probe in probes:
        rows = frame[frame["probe"] == probe]
        if not len(rows):
            continue
        parts = []
        for claim, group in rows.groupby("claim", sort=False):
            held = group[group["verdict"] == HOLDS]
            failed = int((group["verdict"] == "does not hold").sum())
            open_ = int((group["verdict"] == "undetermined").sum())
            text = f"{claim} holds at {len(held)} of {len(group)}"
            if len(held):
                text += (
                    " ("
                    + ", ".join(f"{where_text(r) or 'overall'} {value_text(r)}" for r in held.head(3).to_dict("records"))
                    + (", ..." if len(held) > 3 else "")
                    + ")"
                )
            text += f", {failed} do not hold, {open_} undetermined"
            parts.append(text)
        unit = "over documents" + (
            " (frequency: over token types)" if rows["interval"].str.startswith("token types").any() else ""
        )
        lines.append(f"{probe}: " + "; ".join(parts) + f" [95% intervals {unit}; tested against {against}]")
    headline = frame[(frame["claim"] == "norm_growth") & frame["layer"].isna()]
    if len(headline):
        lines.insert(0, "norms headline: " + claim_sentence(headline.iloc[0].to_dict()))
    if not slugs and len(frame):
        lines.append(NO_BASELINE_NOTE)
    return lines
