"""A run's headline numbers and a few lines of summary, from its findings and tables only.

The comparison page takes differences of these numbers; the console prints the summary after a run,
built from the run's claims (normprobe.claims) so that it says only what its tests support.
"""

from __future__ import annotations

import json
import math
from typing import Any

SUMMARY_LINES = 7


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def model_loss(result: Any) -> float | None:
    """The model's own next-token loss: the updates table's `output` row."""
    table = result.tables.get("updates")
    if table is None or not len(table) or "component" not in table:
        return None
    output = table[table["component"] == "output"]
    return _number(float(output["lens_loss_mean"].iloc[0])) if len(output) else None


def block_descent_mean(result: Any) -> float | None:
    """Token-weighted mean over layers of cos(block update, -dCE/dh)."""
    table = result.tables.get("updates")
    if table is None or not len(table) or "component" not in table:
        return None
    block = table[table["component"] == "block"]
    weights = block["count"].to_numpy(dtype=float)
    if not weights.sum():
        return None
    return _number(float((block["descent_cos_mean"].to_numpy(dtype=float) * weights).sum() / weights.sum()))


def headline_numbers(result: Any) -> dict[str, float | None]:
    """Label -> number for the findings that a comparison subtracts; a probe the run lacks adds no rows."""
    out: dict[str, float | None] = {}
    norms = result.findings.get("norms")
    if norms is not None:
        out["norms: growth per layer, h_0..h_L (geometric)"] = _number((norms.get("growth") or {}).get("geometric"))
        out["norms: growth per layer, positions ≥ 1 (geometric)"] = _number(
            (norms.get("growth_excluding_position0") or {}).get("geometric")
        )
        out["norms: largest position-0 outlier ratio"] = _number(norms.get("position0_ratio_max"))
    updates = result.findings.get("updates")
    if updates is not None:
        out["updates: model loss (nats)"] = model_loss(result)
        out["updates: lens loss drop, first layer to output (nats)"] = _number(updates.get("lens_loss_total_drop"))
        out["updates: lens loss drop, first meaningful layer to output (nats)"] = _number(
            updates.get("lens_loss_drop_from_first_meaningful")
        )
        out["updates: mean descent cosine of block updates"] = block_descent_mean(result)
    return out


def _g(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _generic_line(name: str, f: dict[str, Any]) -> str:
    scalars = [
        f"{k} {_g(_number(v)) if _number(v) is not None else json.dumps(v, default=str)[:40]}"
        for k, v in f.items()
        if isinstance(v, (int, float, str, bool))
    ][:3]
    return f"{name}: {', '.join(scalars) or 'no scalar findings'}"


def summary_lines(result: Any, limit: int = SUMMARY_LINES) -> list[str]:
    """The console's summary, from the run's claims frame (normprobe.claims): the norm-growth headline, one
    line per probe with claims, one per other probe, the no-baseline caveat, then a count of what was left out."""
    from .claims import claims_summary_lines

    probes = result.meta.get("probes", list(result.findings))
    frame = result.claims
    with_claims = set(frame["probe"]) if len(frame) else set()
    lines = claims_summary_lines(frame, probes)
    loss = model_loss(result)
    if "updates" in probes and loss is not None and ((result.meta.get("readout") or {}).get("kind") == "model"):
        # no lens: every layer is read through the rest of the network, so every layer's loss is the model's
        lines.insert(0, f"updates: model loss {_g(loss)} nats, read at every layer through the rest of the network")
    for name in probes:
        if name not in with_claims:
            lines.append(_generic_line(name, result.findings.get(name, {})))
    if len(lines) > limit:
        lines = lines[: limit - 1] + [f"... and {len(lines) - limit + 1} more lines; see the report's claims table"]
    return lines
