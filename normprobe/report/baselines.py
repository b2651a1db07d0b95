"""Baselines in the report: each drawn as a dashed line over the model's own curve, with its band when its table
has interval columns. Renderers get a baseline's tables from `meta["baseline_tables"]` (set by sections_for)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .common import f32

COLOURS = {"random-init": "#7f7f7f", "shuffled": "#8c564b", "no-bos": "#bcbd22"}
BASELINE_NOTE = "Dashed: a null baseline (see run.json's baselines), through the same probes and windows."


def baseline_frames(meta: dict[str, Any], table: str) -> dict[str, pd.DataFrame]:
    """kind -> that baseline's copy of `table`, for the baselines that have it."""
    found = meta.get("baseline_tables") or {}
    return {kind: tables[table] for kind, tables in found.items() if table in tables}


def interval(frame: pd.DataFrame, value: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The table's own interval for `value` (`<value>_ci_low`/`_ci_high`, or `ci_low`/`ci_high`), if it has one."""
    stem = value[: -len("_mean")] if value.endswith("_mean") else value
    for low, high in ((f"{value}_ci_low", f"{value}_ci_high"), (f"{stem}_ci_low", f"{stem}_ci_high"), ("ci_low", "ci_high")):
        if low in frame and high in frame:
            return frame[low].to_numpy(dtype=float), frame[high].to_numpy(dtype=float)
    return None


def add_baseline(
    fig: go.Figure, kind: str, x, y, label: str, band: tuple | None = None, visible: bool = True, colour: str | None = None
) -> None:
    """One dashed line for a baseline, and its band when given; hidden ones stay in the legend."""
    colour = colour or COLOURS.get(kind, "#555555")
    x = np.asarray(x)
    shown: Any = True if visible else "legendonly"
    group = f"baseline {label}"
    if band is not None:
        low, high = band
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=f32(np.concatenate([low, high[::-1]])),
                fill="toself",
                fillcolor=colour,
                opacity=0.12,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=group,
                visible=shown,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=f32(y),
            mode="lines+markers",
            name=label,
            legendgroup=group,
            visible=shown,
            line=dict(color=colour, dash="dash", width=1.5),
            marker=dict(size=5, symbol="x"),
            hovertemplate=f"{label}<br>layer %{{x}}<br>%{{y:.4g}}<extra></extra>",
        )
    )
