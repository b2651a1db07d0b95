"""A run's headline numbers and a few lines of summary, from its findings and tables only.

The comparison page takes differences of these numbers, and the console prints the summary after a run.
"""
from __future__ import annotations

import json
import math
from typing import Any

SUMMARY_LINES = 5


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
            (norms.get("growth_excluding_position0") or {}).get("geometric"))
        out["norms: largest position-0 outlier ratio"] = _number(norms.get("position0_ratio_max"))
    updates = result.findings.get("updates")
    if updates is not None:
        out["updates: model loss (nats)"] = model_loss(result)
        out["updates: lens loss drop, first layer to output (nats)"] = _number(updates.get("lens_loss_total_drop"))
        out["updates: lens loss drop, first meaningful layer to output (nats)"] = _number(
            updates.get("lens_loss_drop_from_first_meaningful"))
        out["updates: mean descent cosine of block updates"] = block_descent_mean(result)
    return out


def _g(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _norms_line(f: dict[str, Any]) -> str:
    growth = _number((f.get("growth") or {}).get("geometric"))
    ratio = _number(f.get("position0_ratio_max"))
    parts = [f"norm grows ×{_g(growth)} per layer (h_0..h_L, geometric mean)"]
    if ratio is not None:
        parts.append(f"position 0 reaches {_g(ratio, 3)}× the median of later positions")
    return "norms: " + "; ".join(parts)


def _layers(layers: list) -> str:
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))


def _updates_line(result: Any, f: dict[str, Any]) -> str:
    lens = f.get("lens_loss") or {}
    losses = [v for _, v in sorted((int(k), v) for k, v in lens.items())]
    parts = []
    if losses and ((getattr(result, "meta", None) or {}).get("readout") or {}).get("kind") == "model":
        # no lens: every layer is read through the rest of the network, so every layer's loss is the model's
        parts.append(f"model loss {_g(_number(losses[-1]))} nats, read at every layer through the rest of the network")
    elif losses:
        trend = "falls at every layer" if f.get("lens_loss_falls_every_layer") else \
            f"rises or stays after layers {', '.join(map(str, f.get('lens_loss_rising_after_layers') or []))}"
        parts.append(f"lens loss {_g(_number(losses[0]))} → {_g(_number(losses[-1]))} nats ({trend})")
        unread = f.get("readout_not_meaningful_layers")
        if unread:
            parts.append(f"readout not meaningful (above log V) at {_layers(unread)}")
    descending = (f.get("descent_positive_layers") or {}).get("block")
    if descending is not None:
        parts.append(f"block updates descend the loss at {_layers(descending) if descending else 'no layer'}")
    return "updates: " + ("; ".join(parts) or "no token had a next token")


def _massive_line(f: dict[str, Any]) -> str:
    threshold, first = _g(_number(f.get("massive_ratio")), 3), f.get("first_massive")
    where = (f"position 0's max/median |h_i| first exceeds {threshold} at {first['site']} of layer {first['layer']} "
             f"(ratio {_g(_number(first.get('ratio')), 3)})") if first else f"position 0's max/median |h_i| stays under {threshold}"
    return f"massive: {where}; {f.get('n_massive_token_types', 0)} token types above it at positions ≥ 1"


def _generic_line(name: str, f: dict[str, Any]) -> str:
    scalars = [f"{k} {_g(_number(v)) if _number(v) is not None else json.dumps(v, default=str)[:40]}"
               for k, v in f.items() if isinstance(v, (int, float, str, bool))][:3]
    return f"{name}: {', '.join(scalars) or 'no scalar findings'}"


def _linesearch_line(f: dict[str, Any]) -> str:
    stars = (f.get("alpha_star") or {}).get("block") or {}
    near = (f.get("alpha_star_near_one") or {}).get("block") or []
    text = ", ".join(f"L{k} {_g(v, 3)}" for k, v in stars.items()) or "n/a"
    return f"linesearch: best step α* of the block update {text}; near 1 at layers {', '.join(map(str, near)) or 'none'}"


def summary_lines(result: Any, limit: int = SUMMARY_LINES) -> list[str]:
    """At most `limit` lines: one per probe, in the run's order, then a count of what was left out."""
    lines = []
    for name in result.meta.get("probes", list(result.findings)):
        f = result.findings.get(name, {})
        if name == "norms":
            lines.append(_norms_line(f))
        elif name == "updates":
            lines.append(_updates_line(result, f))
        elif name == "massive":
            lines.append(_massive_line(f))
        elif name == "linesearch":
            lines.append(_linesearch_line(f))
        else:
            lines.append(_generic_line(name, f))
    if len(lines) > limit:
        lines = lines[:limit - 1] + [f"... and {len(lines) - limit + 1} more probes; see the report"]
    return lines
