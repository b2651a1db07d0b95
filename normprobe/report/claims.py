"""The claims table and the claim-based summary lines, from a run's claims frame (normprobe.claims) only."""

from __future__ import annotations

import textwrap
from typing import Any

import pandas as pd

from .. import claims as claims_module
from ..claim_text import claims_head, claims_rows, interval_note
from ..claim_text import number_text as _num
from ..claim_text import optional_text as _text
from ..claims import HOLDS, baselines_of, value_text
from .common import esc

FAILS, UNDETERMINED = "does not hold", "undetermined"
VERDICT_RANK = {HOLDS: 0, FAILS: 1}  # every other verdict after these
CONSOLE_WIDTH = 120 - len("normprobe: ")  # say() prefixes every line
CONSOLE_VERDICT_LINES = 15
SHORT = {"random_init": "ri", "shuffled": "sh", "no_bos": "nb"}  # baselines' names in the console's Δ column
NO_BASELINE_NOTE = getattr(claims_module, "NO_BASELINE_NOTE", "no baseline was run")

VERDICT_STYLE = {"holds": "background:#d4edda", "does not hold": "background:#f8d7da", "undetermined": "background:#eee"}


def claims_html(frame: pd.DataFrame) -> str:
    """The report's claims section: caveats, then the table with verdicts coloured."""
    if frame is None or not len(frame):
        return ""
    names = claims_head(frame)
    head = "".join(f"<th>{esc(h)}</th>" for h in names)
    at = names.index("verdict")
    body = []
    for cells in claims_rows(frame):
        verdict = cells[at]
        body.append(
            "<tr>"
            + "".join(
                f'<td style="{VERDICT_STYLE.get(verdict, "")}">{esc(c)}</td>' if i == at else f"<td>{esc(c)}</td>"
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    notes = [interval_note(frame)]
    if not baselines_of(frame):
        notes.insert(0, NO_BASELINE_NOTE[0].upper() + NO_BASELINE_NOTE[1:] + ".")
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<h2 id="claims">Claims</h2><ul class="notes">{items}</ul><table><tr>{head}</tr>{"".join(body)}</table>'


def verdicts_first(frame: pd.DataFrame) -> pd.DataFrame:
    """The claims with those that hold first, then those that do not hold, then the rest; stable within each."""
    if not len(frame):
        return frame
    rank = frame["verdict"].map(lambda v: VERDICT_RANK.get(v, 2))
    return frame.iloc[rank.argsort(kind="stable")]


def _decisive(row: dict[str, Any], slugs: list[str]) -> str:
    """The comparison a verdict rests on, shortest: the closest baseline for `holds`, the baseline it loses to for
    `does not hold`, else the null."""
    null = f"vs null {_num(row.get('null'))}"
    found = [s for s in slugs if row.get(f"{s}_difference_ci_low") == row.get(f"{s}_difference_ci_low")]  # not NaN
    if not found:
        return null
    above = row.get("direction") == "greater" or (
        row.get("direction") != "less" and _float(row.get("value")) >= _float(row.get("null"))
    )

    def low(slug: str) -> float:
        return _float(row.get(f"{slug}_difference_ci_low"))

    def high(slug: str) -> float:
        return _float(row.get(f"{slug}_difference_ci_high"))

    if row.get("verdict") == HOLDS:  # of the baselines it beats (those that gate it), the one it beats by least
        beaten = [s for s in found if (low(s) > 0 if above else high(s) < 0)]
        if not beaten:
            return null
        slug = min(beaten, key=low) if above else max(beaten, key=high)
    else:  # the baseline it loses to by most, if its difference lies wholly on the wrong side
        slug = min(found, key=high) if above else max(found, key=low)
        if (high(slug) >= 0) if above else (low(slug) <= 0):
            return null
    diff = _float(row.get(f"{slug}_difference"))
    sign = "+" if diff >= 0 else ""
    return f"Δ{SHORT.get(slug, slug)} {sign}{_num(diff)} [{_num(low(slug))}, {_num(high(slug))}]"


def _short_where(row: dict[str, Any]) -> str:
    layer, component = row.get("layer"), str(row.get("component") or "")
    if layer is None or pd.isna(layer):
        return "all layers"
    return f"L{int(layer)} {component}".strip()


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _clamp(line: str, width: int = CONSOLE_WIDTH) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def _why(row: dict[str, Any]) -> str:
    return _text(row.get("reason")) or _text(row.get("note"))


def claims_table_lines(frame: pd.DataFrame, probes: list[str], where: str = "the report") -> list[str]:
    """The console's claims: a header, one line per claim that holds or does not hold (verdicts first), then how
    many are undetermined and where to read why; a reason shared by every undetermined claim is said once."""
    if frame is None or not len(frame):
        return [_clamp(f"claims: none; the probes run ({', '.join(probes) or 'none'}) test no claim")]
    slugs = baselines_of(frame)
    records = verdicts_first(frame).to_dict("records")
    decided = [r for r in records if r["verdict"] in VERDICT_RANK]
    open_ = [r for r in records if r["verdict"] not in VERDICT_RANK]
    held = sum(r["verdict"] == HOLDS for r in decided)
    units = sorted({str(u).split(" (")[0] for u in frame["interval"].dropna()})
    against = "the null and " + ", ".join(s.replace("_", "-") for s in slugs) if slugs else "the null only (no baseline)"
    lines = [
        f"claims: {held} hold, {len(decided) - held} do not hold, {len(open_)} undetermined",
        _clamp(f"  each tested against {against}; 95% intervals over {' / '.join(units) or 'documents'}"),
    ]
    shown = decided[:CONSOLE_VERDICT_LINES]
    if shown:
        legend = ", ".join(f"Δ{SHORT.get(s, s)} {s.replace('_', '-')}" for s in slugs)
        rests = "  value [95% CI], then what the verdict rests on: the null" + (", or the difference" if slugs else "")
        lines.append(_clamp(rests))
        if slugs:
            lines.append(_clamp(f"  model minus a baseline ({legend})"))
        claim_w = max(len(str(r["claim"])) for r in shown)
        where_w = min(max(len(_short_where(r)) for r in shown), 16)
        value_w = min(max(len(value_text(r)) for r in shown), 26)
        for r in shown:
            lines.append(
                _clamp(
                    f"  {r['verdict']:<13} {str(r['claim']):<{claim_w}} {_short_where(r)[:where_w]:<{where_w}} "
                    f"{value_text(r):<{value_w}} {_decisive(r, slugs)}"
                )
            )
    if len(decided) > len(shown):
        lines.append(f"  ... and {len(decided) - len(shown)} more that hold or do not hold")
    if open_:
        reasons = {_why(r) for r in open_}
        if len(reasons) == 1 and next(iter(reasons)):
            said = f"{'all ' if not decided else ''}{len(open_)} undetermined: {next(iter(reasons))}"
            lines += ["  " + part for part in textwrap.wrap(said, CONSOLE_WIDTH - 2)]
        else:
            lines.append(f"  {len(open_)} undetermined; each says why in the claims table")
    if open_ or len(decided) > len(shown):
        lines.append(f"  every claim: {where}")  # a path is not cut, however long
    return lines
