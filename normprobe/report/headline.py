"""The console's summary of a run, from its claims (normprobe.claims) only, and the model's loss from its tables."""

from __future__ import annotations

import math
from typing import Any


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


def _g(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def summary_lines(result: Any, where: str = "the report") -> list[str]:
    """The console's summary: the claims as a short table (report.claims.claims_table_lines), each line at most
    120 characters with the console's prefix; then the probes that test no claim."""
    from .claims import claims_table_lines

    probes = result.meta.get("probes", [])
    frame = result.claims
    lines = claims_table_lines(frame, probes, where)
    loss = model_loss(result)
    if "updates" in probes and loss is not None and ((result.meta.get("readout") or {}).get("kind") == "model"):
        # no lens: every layer is read through the rest of the network, so every layer's loss is the model's
        lines.insert(0, f"updates: model loss {_g(loss)} nats, read at every layer through the rest of the network")
    with_claims = set(frame["probe"]) if len(frame) else set()
    untested = [name for name in probes if name not in with_claims]
    if untested and len(frame):
        lines.append(f"no claims from {', '.join(untested)}: its tables and figures are in the report"[:109])
    return lines
